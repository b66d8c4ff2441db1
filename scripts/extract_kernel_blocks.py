"""Copy a few rows of llama.cpp-written quantized tensors into tests/data/kernels/ (kernel tests).

The blocks come from the reference pack's GGUFs, written by llama-quantize at llama.cpp commit
0c1e570 (see /work/shared/reference/README.md). Each slice keeps its first 37 rows (an odd count,
not a multiple of the kernels' row tiles) and every column.

    python scripts/extract_kernel_blocks.py [/work/shared/reference/kq]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from llmcli.gguf import GGUFReader

# (GGML type, source GGUF in the pack, tensor)
SLICES = [
    ("Q4_0", "kq-Q4_0.gguf", "blk.0.ffn_down.weight"),
    ("Q2_K", "kq-Q2_K-pure.gguf", "blk.0.ffn_down.weight"),
    ("Q3_K", "kq-Q3_K-pure.gguf", "blk.0.ffn_down.weight"),
    ("Q4_K", "kq-Q4_K_M.gguf", "blk.0.ffn_gate.weight"),
    ("Q6_K", "kq-Q4_K_M.gguf", "blk.0.ffn_down.weight"),
]
N_ROWS = 37


def main() -> None:
    pack = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/reference/kq")
    out_dir = Path(__file__).resolve().parent.parent / "tests" / "data" / "kernels"
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays, index = {}, {}
    for type_name, file_name, tensor in SLICES:
        path = pack / file_name
        reader = GGUFReader(path)
        info = next(t for t in reader.tensors if t.name == tensor)
        assert info.type.name == type_name, (file_name, tensor, info.type.name)
        raw = np.array(reader.tensor_bytes(tensor)[:N_ROWS])
        arrays[type_name] = raw
        index[type_name] = {"file": file_name, "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                            "tensor": tensor, "rows": N_ROWS, "n_cols": int(info.shape[0])}
    np.savez_compressed(out_dir / "llamacpp_blocks.npz", **arrays)
    (out_dir / "llamacpp_blocks.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
