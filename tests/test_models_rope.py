"""RoPE scaling types against transformers and llama.cpp (tests/data/rope, made by
scripts/make_rope_references.py): linear, YaRN, Llama 3 frequency factors (rope_freqs tensor) and
Phi-3 LongRoPE with its short and long factors. Each model is llama.cpp's own f16 conversion of a
tiny random checkpoint; logits are stored for every 4th prompt position and the last.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmcli.generation import generate_ids
from llmcli.models import load_model

ROPE = Path(__file__).parent / "data" / "rope"
VARIANTS = ["linear", "yarn", "llama3", "longrope_short", "longrope_long"]
# What in each file carries the scaling: a rope.scaling.type key, or frequency-factor tensors.
MARKER = {"linear": "rope.scaling.type", "yarn": "rope.scaling.type", "llama3": "rope_freqs.weight",
          "longrope_short": "rope_factors_short.weight", "longrope_long": "rope_factors_long.weight"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_rope_scaling_matches_transformers_and_llamacpp(variant):
    ref = json.loads((ROPE / variant / "reference.json").read_text())
    model = load_model(ROPE / variant / "model-f16.gguf", threads=1, ctx_size=ref["n_ctx"])
    marker = MARKER[variant]
    if marker.endswith(".weight"):
        assert model.reader.has_tensor(marker)
    else:
        assert model.hp.rope_scaling == variant
    logits = model.logits(ref["prompt_ids"])[ref["logit_rows"]]
    for source in ("hf", "llamacpp"):
        expected = np.load(ROPE / variant / f"{source}_logits.npy")
        diff = np.abs(logits - expected).max()
        assert diff < 1e-2, f"{variant}: max |logit - {source}| = {diff:.4g}"
    assert generate_ids(model, ref["prompt_ids"], 16) == ref["llamacpp_greedy_new_ids"] == ref["hf_greedy_new_ids"]


def test_longrope_factor_choice_follows_llamacpp_context_padding():
    """llama.cpp pads the context to a multiple of 256 before choosing long vs short factors, so a
    64-token context on a model trained for 64 already gets the long factors."""
    ref = json.loads((ROPE / "longrope_short" / "reference.json").read_text())
    expected = np.load(ROPE / "longrope_short" / "hf_logits.npy")
    short = load_model(ROPE / "longrope_short" / "model-f16.gguf", threads=1, ctx_size=200)
    long = load_model(ROPE / "longrope_short" / "model-f16.gguf", threads=1, ctx_size=257)
    assert np.abs(short.logits(ref["prompt_ids"])[ref["logit_rows"]] - expected).max() < 1e-2
    assert np.abs(long.logits(ref["prompt_ids"])[ref["logit_rows"]] - expected).max() > 0.05


@pytest.mark.parametrize("variant", ["yarn", "llama3"])
def test_rope_tables_grow_with_the_positions(variant, monkeypatch):
    """RoPE tables start short and double as positions grow: the same logits as tables built for
    the whole context at once, through a prompt and token-by-token steps past several doublings."""
    ref = json.loads((ROPE / variant / "reference.json").read_text())
    ids = ref["prompt_ids"]
    model = load_model(ROPE / variant / "model-f16.gguf", threads=1, ctx_size=ref["n_ctx"])
    whole = model.logits(ids)
    assert len(model._rope_tables[False][0]) >= len(ids)
    monkeypatch.setattr(type(model), "ROPE_TABLE_START", 2)
    model = load_model(ROPE / variant / "model-f16.gguf", threads=1, ctx_size=ref["n_ctx"])
    half = len(ids) // 2
    seq = model.new_sequence()
    model.forward(seq, ids[:half])
    stepped = [np.asarray(model.forward(seq, [t])).reshape(-1) for t in ids[half:]]
    assert len(ids) <= len(model._rope_tables[False][0]) < ref["n_ctx"]  # grown from 2, not built whole
    np.testing.assert_allclose(np.stack(stepped), whole[half:], rtol=0, atol=1e-4)
