"""Embeddings (`llm.embed`) against llama.cpp's llama-embedding (tests/data/embedding, made by
scripts/make_embedding_refs.py): the tiny llama with mean pooling, a tiny Qwen3 whose GGUF declares
LAST pooling (and add_eos_token), and the demo model (Q4_K_M) with mean pooling.

Measured differences (unnormalised vectors; llama.cpp rounds activations to f16 for f16 weights and
to 8 bits for k-quants, llmcli's prompt GEMMs keep float32): tiny llama max abs 1.4e-3, tiny Qwen3
2.1e-3 (values up to ~2.5), L2-normalised max abs 2.7e-4, cosine >= 0.9999995; demo model cosine
>= 0.998, normalised max abs 1.7e-2 (values up to ~41). The bounds below leave about 2x room.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import llmcli
from llmcli.errors import BadInputError, UnsupportedError
from llmcli.generation.pooling import l2_normalize
from tests.conftest import DATA

REFS = DATA / "embedding"
TINY = DATA / "gguf_ref" / "llama-f16.gguf"
QWEN3_EMBED = REFS / "qwen3-embed-f16.gguf"


def _ref(name: str) -> dict:
    return json.loads((REFS / f"{name}.json").read_text())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([float(np.dot(l2_normalize(x), l2_normalize(y))) for x, y in zip(a, b)])


@pytest.fixture(scope="module")
def tiny():
    return llmcli.load(TINY, threads=1, ctx_size=512)


@pytest.mark.parametrize("name, path, pooling", [("llama-f16.mean", TINY, "mean"),
                                                 ("qwen3-embed-f16.last", QWEN3_EMBED, None)])
def test_tiny_models_equal_llama_embedding(name, path, pooling):
    ref = _ref(name)
    llm = llmcli.load(path, threads=1, ctx_size=512)
    assert [llm.tokenize(p, parse_special=True) for p in ref["prompts"]] == ref["ids"]
    expected = np.array(ref["embeddings"], np.float32)
    raw = llm.embed(ref["prompts"], pooling=pooling, normalize=False)
    assert raw.shape == expected.shape and raw.dtype == np.float32
    assert np.abs(raw - expected).max() < 5e-3
    normed = llm.embed(ref["prompts"], pooling=pooling)
    assert np.allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-6)
    assert np.abs(normed - np.stack([l2_normalize(e) for e in expected])).max() < 6e-4
    assert _cosines(raw, expected).min() > 0.999999


def test_qwen3_embedding_model_declares_last_pooling():
    llm = llmcli.load(QWEN3_EMBED, threads=1, ctx_size=512)
    assert llm.pooling() == "last" and llm.pooling("mean") == "mean"
    ids = llm.tokenize("hello", parse_special=True)
    assert ids[-1] == llm.tokenizer.eos_id  # add_eos_token: the pooled state is EOS's
    # last pooling is the final-norm hidden state of the last position
    assert np.allclose(llm.embed("hello", normalize=False), llm.model.hidden_states(ids)[-1], atol=1e-6)


def test_demo_model_equals_llama_embedding():
    ref = _ref("demo.mean")
    llm = llmcli.load(threads=1, ctx_size=512)
    assert [llm.tokenize(p, parse_special=True) for p in ref["prompts"]] == ref["ids"]
    expected = np.array(ref["embeddings"], np.float32)
    normed = llm.embed(ref["prompts"], pooling="mean")
    assert _cosines(normed, expected).min() > 0.996
    assert np.abs(normed - np.stack([l2_normalize(e) for e in expected])).max() < 0.035


def test_pooling_kinds_read_the_hidden_states(tiny):
    ids = tiny.tokenize("Once upon a time")
    hidden = tiny.model.hidden_states(ids)
    assert hidden.shape == (len(ids), tiny.model.hp.n_embd)
    # the hidden states are what the output matrix reads: logits = output(hidden)
    logits = tiny.logits(ids)
    projected = np.empty_like(logits)
    tiny.model.output(np.ascontiguousarray(hidden), projected)
    assert np.allclose(projected, logits, atol=1e-5)
    for kind, row in [("mean", hidden.mean(axis=0)), ("cls", hidden[0]), ("last", hidden[-1])]:
        assert np.allclose(tiny.embed(ids, pooling=kind, normalize=False), row, atol=1e-5), kind


def test_chunks_slots_and_input_shapes_give_the_same_vectors(tiny):
    ref = _ref("llama-f16.mean")
    alone = tiny.embed(ref["prompts"], pooling="mean")
    # prompts longer than a batch (chunks of 4 tokens; one prompt has 81), 3 slots at once. Alone,
    # the 81-token prompt's queries stay float32 against the f16 keys (64+ rows, as llama.cpp's flash
    # attention tiles); in 4-token chunks they are rounded to f16 as llama.cpp's row kernel does
    # (measured 2.9e-5; 4.7e-6 when both round)
    chunked = llmcli.load(TINY, threads=1, ctx_size=512, batch_size=4, parallel=3)
    assert np.abs(chunked.embed(ref["prompts"], pooling="mean") - alone).max() < 1e-4
    by_ids = tiny.embed(ref["ids"], pooling="mean")
    assert np.array_equal(by_ids, alone)
    one = tiny.embed(ref["prompts"][0], pooling="mean")
    assert one.shape == (tiny.model.hp.n_embd,) and np.array_equal(one, alone[0])
    assert tiny.embed(ref["ids"][0], pooling="mean").shape == (1, tiny.model.hp.n_embd)  # ids: one input
    # generation afterwards is unaffected (the slot the embedding used is reused cleanly)
    assert "".join(tiny.generate("Once upon a time", max_tokens=4, temp=0))


@pytest.mark.parametrize("call, error, message", [
    (lambda llm: llm.embed("hello"), BadInputError, "--pooling mean"),
    (lambda llm: llm.embed("hello", pooling="rank"), UnsupportedError, "classification head"),
    (lambda llm: llm.embed("hello", pooling="max"), BadInputError, "one of mean, cls, last"),
    (lambda llm: llm.embed([], pooling="mean"), BadInputError, "empty"),
    (lambda llm: llm.embed(["ok", 3.5], pooling="mean"), BadInputError, "input item 1"),
    (lambda llm: llm.embed([[1, 2], []], pooling="mean"), BadInputError, "input item 1"),
    (lambda llm: llm.embed([[1, 99999]], pooling="mean"), BadInputError, "outside the vocabulary"),
    (lambda llm: llm.embed(" x" * 600, pooling="mean"), BadInputError, "context holds 512"),
])
def test_bad_input(tiny, call, error, message):
    with pytest.raises(error, match=message):
        call(tiny)
