#!/usr/bin/env python3
"""Make llmcli/quants/iq_grids.npz: the lattice codebooks of ggml's i-quants, read from ggml's source.

    python scripts/make_iquant_grids.py LLAMA_CPP_SOURCE_DIR

The i-quant formats index fixed codebooks (ggml-common.h: iq2xxs_grid, iq2xs_grid, iq2s_grid,
iq3xxs_grid, iq3s_grid, iq1s_grid). They are part of the file format, as a block layout is, and
cannot be derived: a GGUF's bytes only mean something with these exact tables. This script reads
them (as data) from the reference llama.cpp checkout (commit 0c1e570) and stores them as arrays.

It also checks what llmcli derives instead of storing:
- the quantizers' grids (ggml-quants.c kgrid_2bit_256/512/1024, kgrid_1bit_2048, kgrid_256/512:
  each element an index l, 2 or 3 bits) are the dequantization grids with every byte replaced by
  its rank among the grid's distinct byte values (iq1s: signed bytes -1, 0, 1);
- ksigns_iq2xs[i] = i with bit 7 set to the parity of i.
Not run by the tests; the npz it writes is committed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "llmcli" / "quants" / "iq_grids.npz"

# name in ggml-common.h -> (dtype, entries, bits per element index, quantizer table in ggml-quants.c)
GRIDS = {
    "iq2xxs_grid": (np.uint64, 256, 2, "kgrid_2bit_256"),
    "iq2xs_grid": (np.uint64, 512, 2, "kgrid_2bit_512"),
    "iq2s_grid": (np.uint64, 1024, 2, "kgrid_2bit_1024"),
    "iq1s_grid": (np.uint64, 2048, 2, "kgrid_1bit_2048"),
    "iq3xxs_grid": (np.uint32, 256, 3, "kgrid_256"),
    "iq3s_grid": (np.uint32, 512, 3, "kgrid_512"),
}


def table(text: str, pattern: str, end: str = r"\}") -> list[int]:
    m = re.search(pattern + r"(.*?)" + end, text, re.S)
    if not m:
        sys.exit(f"table not found: {pattern}")
    return [int(v, 0) for v in re.findall(r"0x[0-9a-fA-F]+|\d+", m.group(1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path, help="llama.cpp source directory (vendor/llama.cpp)")
    args = ap.parse_args()
    common = (args.source / "ggml/src/ggml-common.h").read_text()
    quants = (args.source / "ggml/src/ggml-quants.c").read_text()
    arrays = {}
    for name, (dtype, n, bits, kgrid_name) in GRIDS.items():
        values = table(common, rf"GGML_TABLE_BEGIN\(\w+, {name}, \w+\)", "GGML_TABLE_END")
        grid = np.array(values, dtype=dtype)
        assert grid.size == n, (name, grid.size)
        signed = name == "iq1s_grid"
        elems = grid.view(np.int8 if signed else np.uint8).reshape(n, -1)
        levels = np.unique(elems)
        ranks = np.searchsorted(levels, elems).astype(np.int64)
        derived = (ranks << (bits * np.arange(elems.shape[1]))).sum(axis=1)
        kgrid = np.array(table(quants, rf"static const uint16_t {kgrid_name}\[\w+\] = \{{"), dtype=np.int64)
        assert np.array_equal(derived, kgrid), f"{name}: ranks do not give {kgrid_name}"
        arrays[name] = grid
        print(f"{name}: {n} entries, levels {levels.tolist()}, = {kgrid_name} by rank")
    signs = np.array(table(common, r"GGML_TABLE_BEGIN\(uint8_t, ksigns_iq2xs, 128\)", "GGML_TABLE_END"))
    parity = np.array([bin(i).count("1") & 1 for i in range(128)])
    assert np.array_equal(signs, np.arange(128) | (parity << 7)), "ksigns_iq2xs is not i | parity << 7"
    tmp = OUT.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
