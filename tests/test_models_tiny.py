"""Every architecture's forward pass against transformers (float32) and llama.cpp, on tiny models.

Architectures: llama (+ Mistral, Mixtral, a Llama-3 BPE bf16 checkpoint), qwen2, qwen2moe, qwen3,
gemma, gemma2, gemma3, phi3, baichuan. GGUFs come from converting tests/data/hf/<name> at test time with `llmcli convert` (byte-identical to
llama.cpp's converter, which tests/test_convert*.py pins), plus the two files llama.cpp itself wrote
that are stored whole (llama-f16, qwen2-f16). Expected values: `reference/logits.npy` and
`reference/greedy.json` (transformers), `gguf_ref/<name>-<kind>.llamacpp_logits.npy` (llama.cpp).
Tolerance: the reference README measures llama.cpp itself at 0.001-0.006 from transformers
(f16 KV cache); a float32 runtime should be within 1e-2 everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmcli.convert.pipeline import convert
from llmcli.errors import BadInputError
from llmcli.generation import generate_ids
from llmcli.models import load_model

DATA = Path(__file__).parent / "data"
TOL = 1e-2

# name -> (GGUF architecture, --pre for byte-level BPE vocabularies llama.cpp cannot identify)
MODELS = {
    "llama": ("llama", None),
    "llama_bf16": ("llama", "llama-bpe"),
    "mistral": ("llama", None),
    "mixtral": ("llama", None),
    "qwen2": ("qwen2", "qwen2"),
    "gemma3": ("gemma3", None),
    "phi3": ("phi3", None),
    "qwen3": ("qwen3", "qwen2"),
    "qwen2moe": ("qwen2moe", "qwen2"),
    "gemma": ("gemma", None),
    "gemma2": ("gemma2", None),
    "baichuan": ("baichuan", None),
}


def _reference(name: str):
    ref = DATA / "hf" / name / "reference"
    ids = json.loads((ref / "prompt.json").read_text())["input_ids"]
    greedy = json.loads((ref / "greedy.json").read_text())["greedy_new_ids"]
    return ids, np.load(ref / "logits.npy"), greedy


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{(name, kind): path} of our conversions, made once per test module."""
    out_dir = tmp_path_factory.mktemp("tiny_gguf")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, kind: str) -> Path:
        if (name, kind) not in cache:
            path = out_dir / f"{name}-{kind}.gguf"
            convert(DATA / "hf" / name, path, outtype=kind, pre=MODELS[name][1])
            cache[name, kind] = path
        return cache[name, kind]

    return get


def _check(path: Path, name: str, kind: str, arch: str):
    ids, ref_logits, ref_greedy = _reference(name)
    model = load_model(path, threads=1)
    assert model.spec.name == arch
    logits = model.logits(ids)
    assert logits.shape == ref_logits.shape
    diff = np.abs(logits - ref_logits).max()
    assert diff < TOL, f"{name}-{kind}: max |logit - transformers| = {diff:.4g}"
    llamacpp = DATA / "gguf_ref" / f"{name}-{kind}.llamacpp_logits.npy"
    if llamacpp.exists():  # llama.cpp's own outputs for the same file (pack models)
        diff_lc = np.abs(logits - np.load(llamacpp)).max()
        assert diff_lc < TOL, f"{name}-{kind}: max |logit - llama.cpp| = {diff_lc:.4g}"
    assert generate_ids(model, ids, 16) == ref_greedy
    return model


@pytest.mark.parametrize("kind", ["f32", "f16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_and_greedy_match_transformers(converted, name, kind):
    _check(converted(name, kind), name, kind, MODELS[name][0])


def test_bf16_gguf_of_a_bf16_checkpoint(converted):
    """llama_bf16 is stored in bfloat16, so a BF16 GGUF holds exactly the reference's weights."""
    _check(converted("llama_bf16", "bf16"), "llama_bf16", "bf16", "llama")


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_llamacpp_written_gguf(name):
    """The f16 files llama.cpp's converter wrote, stored whole."""
    _check(DATA / "gguf_ref" / f"{name}-f16.gguf", name, "f16", MODELS[name][0])


@pytest.mark.parametrize("name", ["gemma3", "gemma2", "mixtral", "qwen2moe", "phi3"])
def test_batches_and_single_token_steps_agree_with_the_reference(converted, name):
    """Prompt split in uneven batches, then token by token through the KV cache: the same logits
    (gemma2's sliding window of 16 slides across batch boundaries; MoE routing per batch)."""
    ids, ref_logits, _ = _reference(name)
    model = load_model(converted(name, "f32"), threads=1, batch_size=5)
    by_batches = model.logits(ids)
    seq = model.new_sequence()
    one_by_one = np.stack([model.forward(seq, [t]) for t in ids])
    for got in (by_batches, one_by_one):
        assert np.abs(got - ref_logits).max() < TOL
    assert seq.n_past == len(ids)


def test_forward_continues_the_cache_and_rewinding_forgets_it(converted):
    ids, ref_logits, _ = _reference("llama")
    model = load_model(converted("llama", "f32"), threads=1)
    seq = model.new_sequence()
    model.forward(seq, ids[:10])
    last = model.forward(seq, ids[10:])
    assert np.abs(last - ref_logits[-1]).max() < TOL
    first = model.forward(seq, ids[:1], pos=0)
    assert np.abs(first - ref_logits[0]).max() < TOL


def test_generate_stops_after_a_stop_id_and_takes_a_sampler(converted):
    ids, _, ref_greedy = _reference("qwen2")
    model = load_model(converted("qwen2", "f32"), threads=1)
    stop = ref_greedy[5]
    first = ref_greedy.index(stop)
    assert generate_ids(model, ids, 16, stop_ids=[stop]) == ref_greedy[:first]  # the stop id ends it
    seen = []

    def sampler(logits):  # greedy, recording what it was given
        seen.append(logits.shape)
        return int(np.argmax(logits))

    assert generate_ids(model, ids, 4, sampler=sampler) == ref_greedy[:4]
    assert seen == [(model.hp.n_vocab,)] * 4


def test_sliding_window_ring_cache_and_rewinding(converted):
    """gemma2 (window 16, layer 0 sliding): with batches of 5 its sliding layer keeps a ring of
    21 positions; continuing, rewinding a little (the ring still holds the window) and rewinding far
    (the prefix is evaluated again) all give the reference logits."""
    ids, ref_logits, ref_greedy = _reference("gemma2")
    model = load_model(converted("gemma2", "f32"), threads=1, batch_size=5, ctx_size=128)
    seq = model.new_sequence()
    assert model.hp.is_swa == [True, False] and seq.cache.slots == [16 + 5, 128]
    model.forward(seq, ids)
    for pos in (len(ids) - 3, 10, 0):
        last = model.forward(seq, ids[pos:], pos=pos)
        assert np.abs(last - ref_logits[-1]).max() < TOL, pos
    assert generate_ids(model, ids, 16) == ref_greedy
    with pytest.raises(BadInputError, match="leaves a gap"):
        model.forward(seq, [5], pos=seq.n_past + 1)
