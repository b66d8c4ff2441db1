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


# -- block types: q8_0 and q4_0 -------------------------------------------------------------------

KV_REFS = DATA / "kv_cache"
# model -> (HF checkpoint to convert to f32 and its --pre, or None: the GGUF in tests/data)
BLOCK_MODELS = {"kq": None, "gemma": ("gemma", None), "qwen3": ("qwen3", "qwen2")}
BLOCK_TYPES = ("f16", "q8_0", "q4_0")


@pytest.fixture(scope="module")
def block_models(tmp_path_factory):
    """The models of tests/data/kv_cache (heads of 32 and 64 values)."""
    out = tmp_path_factory.mktemp("kv_blocks")
    paths = {}
    for name, source in BLOCK_MODELS.items():
        if source is None:
            paths[name] = DATA / "kq" / "kq-f16.gguf"
        else:
            paths[name] = out / f"{name}-f32.gguf"
            convert(DATA / "hf" / source[0], paths[name], outtype="f32", pre=source[1])
    return paths


@pytest.mark.parametrize("kind", BLOCK_TYPES)
@pytest.mark.parametrize("name", sorted(BLOCK_MODELS))
def test_cache_type_logits_are_where_llamacpp_puts_them(block_models, name, kind):
    """llama.cpp's logits with -ctk/-ctv of the type (flash attention on, as a quantized V cache
    needs) against its f32-cache logits are its own distance; ours with the same cache type are
    within twice that distance of its (scripts/make_kv_cache_refs.py). On the f32 models, whose
    keys and values are llama.cpp's bits, the blocks' rounding is reproduced, not just bounded:
    ours are nearer to its q8_0/q4_0 run than to its f32 run. (kq has f16 weights: llama.cpp rounds
    the activations to f16 for those products, so the keys differ in their last bits and land on
    other 8/4-bit codes - a rounding noise of the same size as llama.cpp's own. Its f16 cache run
    accumulates the values in f16 inside flash attention; ours in float32.)"""
    index = json.loads((KV_REFS / "index.json").read_text())["models"][name]
    theirs = np.load(KV_REFS / f"{name}.{kind}.logits.npy")
    their_f32 = np.load(KV_REFS / f"{name}.f32.logits.npy")
    own = np.abs(theirs - their_f32).max()
    assert own == pytest.approx(index["vs_f32"][kind]["max_abs"])
    model = load_model(block_models[name], threads=1, ctx_size=64, cache_type_k=kind, cache_type_v=kind)
    ours = model.logits(index["prompt_ids"])
    assert np.abs(ours - theirs).max() <= 2 * own, (np.abs(ours - theirs).max(), own)
    if kind in ("q8_0", "q4_0") and name != "kq":
        assert np.abs(ours - theirs).mean() < 0.25 * np.abs(ours - their_f32).mean()


def test_block_caches_take_their_block_sizes():
    """q8_0: 34 bytes per 32 values (8.5 bits), q4_0: 18 (4.5 bits); the plan counts the same."""
    path = DATA / "kq" / "kq-f16.gguf"
    sizes = {}
    for kind in ("f32", "f16", "q8_0", "q4_0"):
        model = load_model(path, threads=1, ctx_size=64, cache_type_k=kind, cache_type_v=kind)
        cache = model.new_cache(2)
        with GGUFReader(path) as reader:
            assert plan_memory(reader, 64, 2, 512, kind, kind).kv == cache.n_bytes
        assert model.kv_memory(2)["bytes"] == cache.n_bytes
        sizes[kind] = cache.n_bytes
    values = sizes["f32"] / 4  # every key and value of every position, head and layer
    assert sizes["q8_0"] * 8 / values == 8.5 and sizes["q4_0"] * 8 / values == 4.5
    mixed = KVCache(1, [10], 2, 64, 32, "q4_0", "q8_0")
    assert mixed.keys[0].shape == (1, 2, 10, 2 * 18) and mixed.values[0].shape == (1, 2, 10, 34)
    assert mixed.n_bytes == 10 * 2 * (2 * 18 + 34)


def test_store_writes_the_blocks_llamacpp_writes():
    """q4_0 rows are quantize_row_q4_0_ref's blocks (our Q4_0 quantizer, byte-identical to
    llama-quantize's); q8_0 rows are the x86 quantize_row_q8_0 that ggml's CPU set_rows calls (the
    activation blocks of the int8 mat-vecs): scale to fp16, codes rint(x * 127 / amax)."""
    from llmcli.engine.kernels.int8 import quantize_activations
    from llmcli.gguf.constants import GGMLType
    from llmcli.quants import quantize

    rng = np.random.default_rng(3)
    k = rng.standard_normal((3, 2, 64)).astype(np.float32)
    v = (rng.standard_normal((3, 2, 32)) * 1e-3).astype(np.float32)
    k_cache, v_cache = np.zeros((2, 2, 4, 36), np.uint8), np.zeros((2, 2, 4, 34), np.uint8)
    seq, positions = np.array([1, 1, 0]), np.array([5, 6, 2])  # a ring of 4 slots
    ops.kv_kernels("q4_0", "q8_0").store_rows(k, v, k_cache, v_cache, seq, positions)
    for t in range(3):
        for h in range(2):
            slot = positions[t] % 4
            assert bytes(k_cache[seq[t], h, slot]) == bytes(quantize(k[t, h][None], GGMLType.Q4_0))
            xq, xd, _ = quantize_activations(v[t, h].copy(), np.int32(0))
            expected = np.float16(xd[0]).tobytes() + xq.tobytes()
            assert bytes(v_cache[seq[t], h, slot]) == expected


@pytest.mark.parametrize("serial", [False, True])
def test_block_attention_is_attention_over_the_blocks_values(serial):
    """Attention over q8_0 keys and q4_0 values gives what float attention gives over the values
    the blocks hold, with the queries as the Q8_0 blocks they are dotted as (llama.cpp's
    arithmetic): only float rounding apart."""
    from llmcli.engine.kernels.int8 import quantize_activations
    from llmcli.gguf.constants import GGMLType
    from llmcli.quants import dequantize

    rng = np.random.default_rng(4)
    n_seq, n_kv, head_dim, n_slots = 2, 2, 64, 40
    q = rng.standard_normal((3, 4, head_dim)).astype(np.float32)
    k = rng.standard_normal((n_seq * n_slots, n_kv, head_dim)).astype(np.float32)
    v = rng.standard_normal((n_seq * n_slots, n_kv, head_dim)).astype(np.float32)
    k_cache = np.zeros((n_seq, n_kv, n_slots, 2 * 34), np.uint8)
    v_cache = np.zeros((n_seq, n_kv, n_slots, 2 * 18), np.uint8)
    seq_all = np.repeat(np.arange(n_seq), n_slots)
    pos_all = np.tile(np.arange(n_slots), n_seq)
    ops.kv_kernels("q8_0", "q4_0").store_rows(k, v, k_cache, v_cache, seq_all, pos_all)
    k_float = np.empty((n_seq, n_kv, head_dim, n_slots), np.float32)
    v_float = np.empty((n_seq, n_kv, n_slots, head_dim), np.float32)
    for s in range(n_seq):
        for h in range(n_kv):
            k_float[s, h] = dequantize(k_cache[s, h], GGMLType.Q8_0).T
            v_float[s, h] = dequantize(v_cache[s, h], GGMLType.Q4_0)
    q_blocks = np.empty_like(q)
    for t in range(3):
        for h in range(4):
            xq, xd, _ = quantize_activations(q[t, h].copy(), np.int32(0))
            q_blocks[t, h] = xq.astype(np.float32) * np.repeat(xd, 32)
    seq, positions = np.array([1, 0, 1]), np.array([39, 7, 20])
    args = (seq, positions, 0.125, 0.0, 0, np.zeros(4, np.float32))
    out, expected = np.empty((3, 4, head_dim), np.float32), np.empty((3, 4, head_dim), np.float32)
    kernels = ops.kv_kernels("q8_0", "q4_0")
    (kernels.rows_serial if serial else kernels.rows)(q, k_cache, v_cache, *args, out)
    ops.attention_rows_serial(q_blocks, k_float, v_float, *args, expected)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_block_types_need_heads_of_whole_blocks(cli):
    """Heads of 16 values do not split into blocks of 32: one line, as llama.cpp refuses them."""
    res = cli("run", "-m", DATA / "gguf_ref" / "qwen2-f16.gguf", "-p", "hi", "-n", "1", "-ctk", "q8_0")
    assert res.exit_code == 1
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--cache-type-k" in lines[0] and "16" in lines[0], res.stderr


def test_run_v_prints_the_cache_memory(cli):
    res = cli("run", "-m", DATA / "kq" / "kq-f16.gguf", "-p", "hi", "-n", "1", "-c", "64", "-t", "1",
              "-ctk", "q8_0", "-ctv", "q4_0", "-v")
    assert res.exit_code == 0, res.stderr
    model = load_model(DATA / "kq" / "kq-f16.gguf", threads=1, ctx_size=64, cache_type_k="q8_0", cache_type_v="q4_0")
    kv = model.kv_memory()
    line = next(line for line in res.stderr.splitlines() if line.startswith("KV cache"))
    assert "K (q8_0)" in line and "V (q4_0)" in line and "64 positions" in line
    assert f"{kv['bytes_k'] / 2**20:.2f} MiB" in line and f"{kv['bytes_v'] / 2**20:.2f} MiB" in line


@pytest.mark.parametrize("k_kind,v_kind", [("q8_0", "q4_0"), ("q4_0", "q8_0"), ("f16", "q8_0")])
@pytest.mark.parametrize("window", [0, 24])
def test_prompt_panels_over_blocks_are_the_row_kernel(k_kind, v_kind, window):
    """A prompt chunk with a block-type cache runs the GEMM-shaped kernel over the blocks'
    dequantized values, with the queries as the Q8_0 blocks llama.cpp's row kernel dots them as
    (or as f16 for f16 keys): the row kernel's results, up to float rounding - sliding-window
    ring included (36 slots wrapped by positions 0 .. 51, queries at 40 .. 51 in a window of 24)."""
    rng = np.random.default_rng(11)
    n_kv, head_dim, n_tok = 2, 64, 12
    pos0 = 40 if window else 20
    n_pos = pos0 + n_tok
    n_slots = 36 if window else n_pos
    q = rng.standard_normal((n_tok, 4, head_dim)).astype(np.float32)
    k = rng.standard_normal((n_pos, n_kv, head_dim)).astype(np.float32)
    v = rng.standard_normal((n_pos, n_kv, head_dim)).astype(np.float32)
    k_cache = KVCache(1, [n_slots], n_kv, head_dim, head_dim, k_kind, v_kind)
    keys, values = k_cache.layer(0)
    positions = np.arange(n_pos)
    kernels = ops.kv_kernels(k_kind, v_kind)
    kernels.store_rows(k, v, keys, values, np.zeros(n_pos, np.int64), positions)
    ops.round_queries(q, ops.QUERY_ROUNDING[k_kind])
    args = (0.125, 0.0, window, np.zeros(4, np.float32))
    rows, panels = np.empty((n_tok, 4, head_dim), np.float32), np.empty((n_tok, 4, head_dim), np.float32)
    kernels.rows(q, keys, values, np.zeros(n_tok, np.int64), positions[pos0:], *args, rows)
    assert ops.attention_blocked_fits(n_tok, pos0, window, n_slots, head_dim)
    kernels.blocked(q, keys[0], values[0], pos0, *args, panels)
    np.testing.assert_allclose(panels, rows, rtol=0, atol=2e-5)
