"""IQ2_XXS, IQ2_XS, IQ2_S against ggml (llama.cpp 0c1e570): quantized bytes and dequantized bits.

References: tests/data/iquants/ (scripts/make_iquant_refs.py): quantize.json (llama-quantize
--imatrix runs on the kq model, per tensor type and data sha256), dequantize.npz (ggml's to_float
on random and real blocks) and quantize_rows.npz (ggml_quantize_chunk on random rows, with and
without importance weights).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from llmcli.errors import UnsupportedError
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import GGMLType
from llmcli.quantize import load_importance
from llmcli.quants import dequantize, get_codec, quantize
from llmcli.quants.iq2 import KINDS, MAP_SIZE
from llmcli.quants.iq_search import search_tables

DATA = Path(__file__).parent / "data"
REFS = DATA / "iquants"
KQ = DATA / "kq" / "kq-f16.gguf"
IMATRIX = DATA / "imatrix" / "kq.imatrix.gguf"
TYPES = [GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.IQ2_S]


@cache
def _expected_hashes() -> dict[tuple[str, str], str]:
    """(type, tensor) -> llama-quantize's data sha256, from every run with the imatrix (a tensor
    quantized to one type gets the same bytes in every mix)."""
    record = json.loads((REFS / "quantize.json").read_text())
    assert record["input_sha256"] == hashlib.sha256(KQ.read_bytes()).hexdigest()
    out: dict[tuple[str, str], str] = {}
    for run in record["runs"]:
        if not run["imatrix"] or run.get("failed"):
            continue
        for name, type_name, sha in run["tensors"]:
            assert out.setdefault((type_name, name), sha) == sha, (type_name, name)
    return out


def _one_per_role(names: list[str]) -> list[str]:
    """The first tensor of each role (blk.N.ffn_up -> ffn_up): every shape and every kind of
    importance data, at a fraction of the cost of the whole model."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(re.sub(r"^blk\.\d+\.", "", name), name)
    return list(seen.values())


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_quantize_matches_llama_quantize_per_tensor(ggml_type):
    expected = {name: sha for (t, name), sha in _expected_hashes().items() if t == ggml_type.name}
    assert len(expected) >= 39   # the mixes give IQ2_XS / IQ2_S to 39-47 of the kq model's tensors
    weights = load_importance(IMATRIX).weights
    names = _one_per_role(sorted(expected))
    assert len(names) >= 5
    with GGUFReader(KQ) as r:
        tensors = {t.name: t for t in r.tensors}
        for name in names:
            x = r.tensor_array(tensors[name]).astype(np.float32)
            # no importance data (token_embd): only IQ2_S, whose ggml quantizer has a weightless path
            assert name in weights or ggml_type == GGMLType.IQ2_S, name
            got = quantize(x.reshape(-1, x.shape[-1]), ggml_type, weights.get(name))
            assert hashlib.sha256(got.tobytes()).hexdigest() == expected[name], name


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_quantize_rows_match_ggml(ggml_type):
    with np.load(REFS / "quantize_rows.npz") as ref:
        rows, weights = ref["rows"], ref["weights"]
        np.testing.assert_array_equal(quantize(rows, ggml_type, weights), ref[f"{ggml_type.name}.weighted"])
        if ggml_type == GGMLType.IQ2_S:   # the one of the three ggml quantizes without weights
            np.testing.assert_array_equal(quantize(rows, ggml_type), ref[f"{ggml_type.name}.plain"])
        else:
            assert f"{ggml_type.name}.plain" not in ref
            with pytest.raises(UnsupportedError, match="--imatrix"):
                quantize(rows, ggml_type)


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_dequantize_is_ggmls_bit_for_bit(ggml_type):
    with np.load(REFS / "dequantize.npz") as ref:
        blocks, values = ref[f"{ggml_type.name}.blocks"], ref[f"{ggml_type.name}.values"]
    got = dequantize(blocks, ggml_type)
    assert got.shape == values.shape
    np.testing.assert_array_equal(got.view(np.uint32), values.view(np.uint32))
    # the engine's in-place decoder is the same kernel: a tile of several blocks per row
    out = np.empty((blocks.shape[0] // 2, 512), np.float32)
    get_codec(ggml_type).decoder(np.ascontiguousarray(blocks[: 2 * out.shape[0]]), out)
    np.testing.assert_array_equal(out.reshape(-1).view(np.uint32), values[: 2 * out.shape[0]].reshape(-1).view(np.uint32))


def test_search_tables_cover_every_point_the_quantizers_look_up():
    for kind in KINDS.values():
        tables = search_tables(kind.grid, kind.nwant, MAP_SIZE)
        levels = np.array(np.meshgrid(*[np.arange(3)] * 8, indexing="ij")).reshape(8, -1)
        points = (levels << (2 * np.arange(8))[:, None]).sum(axis=0)
        on_grid = tables.kmap[points] >= 0
        assert on_grid.sum() == tables.qgrid.shape[0]        # every grid entry is such a point
        lists = -tables.kmap[points[~on_grid]] - 1
        assert (tables.neighbours[lists] > 0).all()
        assert search_tables(kind.grid, kind.nwant, MAP_SIZE) is tables  # built once
