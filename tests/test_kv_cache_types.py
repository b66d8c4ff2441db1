"""KV cache types (`--cache-type-k/-v f32|f16`): the kernels read an f16 cache exactly as the values
it holds, the memory halves, and f16 logits sit where llama.cpp's (made with its f16 cache) are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmcli.convert.pipeline import convert
from llmcli.engine import ops
from llmcli.engine.kv_cache import KVCache
from llmcli.gguf.reader import GGUFReader
from llmcli.models import load_model
from llmcli.models.transformer import plan_memory

DATA = Path(__file__).parent / "data"
# name -> --pre (byte-level BPE vocabularies llama.cpp's hash table does not know)
MODELS = {"llama": None, "qwen2": "qwen2", "gemma3": None, "mistral": None, "mixtral": None, "phi3": None,
          "llama_bf16": "llama-bpe"}


def _as_half_bits(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).view(np.uint16)


def _case(rng, n_tok, pos0, n_heads, n_kv, head_dim, n_slots):
    q = rng.standard_normal((n_tok, n_heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((n_kv, head_dim, n_slots)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_slots, head_dim)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("kernel", ["attention", "attention_serial", "attention_blocked"])
def test_prompt_kernels_read_f16_as_its_values(kernel):
    """Each kernel on an f16 cache gives the bits it gives on a float32 cache holding the same
    (f16-representable) numbers: the conversion is exact and the arithmetic unchanged."""
    rng = np.random.default_rng(7)
    q, k, v = _case(rng, 12, 20, 4, 2, 64, 40)
    k16, v16 = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    slopes = np.zeros(4, np.float32)
    outs = []
    for kc, vc in ((k16, v16), (_as_half_bits(k), _as_half_bits(v))):
        out = np.empty((12, 4, 64), np.float32)
        getattr(ops, kernel)(q, kc, vc, 20, 0.125, 0.0, 0, slopes, out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("serial", [False, True])
def test_decode_rows_read_f16_as_its_values(serial):
    rng = np.random.default_rng(8)
    n_seq, n_kv, head_dim, n_slots = 3, 2, 32, 50
    q = rng.standard_normal((3, 4, head_dim)).astype(np.float32)
    k = rng.standard_normal((n_seq, n_kv, head_dim, n_slots)).astype(np.float32)
    v = rng.standard_normal((n_seq, n_kv, n_slots, head_dim)).astype(np.float32)
    seq, positions = np.array([2, 0, 1]), np.array([49, 7, 30])
    kernel = ops.attention_rows_serial if serial else ops.attention_rows
    outs = []
    for kc, vc in ((k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)),
                   (_as_half_bits(k), _as_half_bits(v))):
        out = np.empty((3, 4, head_dim), np.float32)
        kernel(q, kc, vc, seq, positions, 0.2, 30.0, 0, np.zeros(4, np.float32), out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])


def test_store_rounds_to_nearest_half():
    rng = np.random.default_rng(9)
    k = (rng.standard_normal((5, 2, 16)) * 100).astype(np.float32)
    v = (rng.standard_normal((5, 2, 16)) * 1e-5).astype(np.float32)  # f16 subnormals too
    k_cache, v_cache = np.zeros((2, 16, 8), np.uint16), np.zeros((2, 8, 16), np.uint16)
    ops.store_kv(k, v, k_cache, v_cache, 6)  # positions 6..10 in a ring of 8
    for t in range(5):
        slot = (6 + t) % 8
        assert np.array_equal(k_cache[:, :, slot], _as_half_bits(k[t]))
        assert np.array_equal(v_cache[:, slot], _as_half_bits(v[t]))


def test_f16_halves_the_cache():
    path = DATA / "gguf_ref" / "qwen2-f16.gguf"
    sizes = {}
    for kind in ("f32", "f16"):
        model = load_model(path, threads=1, ctx_size=96, cache_type_k=kind, cache_type_v=kind)
        cache = model.new_cache(2)
        assert cache.keys[0].dtype == (np.float32 if kind == "f32" else np.uint16)
        with GGUFReader(path) as reader:
            assert plan_memory(reader, 96, 2, 512, kind, kind).kv == cache.n_bytes
        sizes[kind] = cache.n_bytes
    assert sizes["f16"] * 2 == sizes["f32"]
    mixed = KVCache(1, [10], 2, 16, 16, "f32", "f16")
    assert mixed.n_bytes == 10 * 2 * 16 * (4 + 2)


@pytest.fixture(scope="module")
def f32_models(tmp_path_factory):
    out = tmp_path_factory.mktemp("kv_types")
    paths = {}
    for name, pre in MODELS.items():
        paths[name] = out / f"{name}.gguf"
        convert(DATA / "hf" / name, paths[name], outtype="f32", pre=pre)
    return paths


@pytest.mark.parametrize("name", sorted(MODELS))
def test_f16_cache_logits_are_where_llamacpp_f16_cache_puts_them(f32_models, name):
    """llama.cpp's reference logits were computed with its default f16 KV cache. With ours in f16
    too, our logits are closer to them than with f32, and within llama.cpp's own distance from
    transformers (float32 throughout)."""
    ids = json.loads((DATA / "hf" / name / "reference" / "prompt.json").read_text())["input_ids"]
    hf = np.load(DATA / "hf" / name / "reference" / "logits.npy")
    llamacpp = np.load(DATA / "gguf_ref" / f"{name}-f32.llamacpp_logits.npy")
    diff = {}
    for kind in ("f32", "f16"):
        model = load_model(f32_models[name], threads=1, cache_type_k=kind, cache_type_v=kind)
        diff[kind] = np.abs(model.logits(ids) - llamacpp).max()
    assert diff["f16"] < diff["f32"], diff
    assert diff["f16"] <= np.abs(llamacpp - hf).max(), diff


@pytest.mark.parametrize("option", ["-ctk", "-ctv"])
def test_unknown_cache_type_is_one_line(cli, option):
    res = cli("run", "-m", DATA / "gguf_ref" / "qwen2-f16.gguf", "-p", "hi", "-n", "1", option, "q5_9")
    assert res.exit_code == 1
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "q5_9" in lines[0] and "--cache-type-" in lines[0], res.stderr
