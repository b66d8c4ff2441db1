"""The demo model (Gemma 3 270M, Q4_K_M) against llama.cpp's outputs in tests/data/demo/llamacpp.json.

llama.cpp quantizes activations to 8 bits for these weights; so do we: mat-vecs for single tokens
and short batches (these short prompts and generation), the integer GEMM (the default prompt path)
for longer ones (the teacher-forced run below). Either way logits differ from llama.cpp's by 0.1-0.4 (its f16
KV cache, summation order; logit std ~5) and greedy paths may part at near-ties. Hence:
* free-running greedy must equal llama.cpp's up to the first step whose top-two margin is < 0.5;
* teacher-forced on llama.cpp's 32 greedy tokens (same context at every step), our argmax must be
  llama.cpp's at every step whose margin is >= 0.5, and the chosen token's logit close to its;
* at the last prompt position, >= 18 of the top 20 ids shared, logits within the README's range.
The logit values are held to those bounds on the float32 prompt path (asked for): with 8-bit
activations, ours and llama.cpp's rounding noise moves the logits of a position by a common shift of
up to ~0.4 (measured on the default path; our own mat-vec prompt path shifts by 0.2-0.3 too), which no
probability sees; the default path is held to the same bounds once that shift is taken out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmcli.demo import demo_model_path
from llmcli.generation import Request, SamplingParams, Scheduler, generate_ids
from llmcli.models import load_model

REF = json.loads((Path(__file__).parent / "data" / "demo" / "llamacpp.json").read_text())
PROMPTS = REF["prompts"]
MARGIN = 0.5


@pytest.fixture(scope="module")
def model():
    return load_model(demo_model_path(), threads=1, ctx_size=REF["settings"]["n_ctx"])


def _first_near_tie(steps) -> int:
    return next((i for i, s in enumerate(steps) if s["margin_to_2nd"] < MARGIN), len(steps))


@pytest.mark.parametrize("case", PROMPTS, ids=[p["prompt"] for p in PROMPTS])
def test_greedy_until_the_first_near_tie(model, case):
    n = _first_near_tie(case["greedy_steps"])
    assert n >= 1
    got = generate_ids(model, case["prompt_ids"], n)
    assert got == case["greedy_new_ids"][:n]


def test_batched_greedy_until_the_first_near_tie(model):
    """Every prompt at once, decoded together (continuous batching, prompts of different lengths):
    each one's greedy path is llama.cpp's up to its first near-tie, as alone."""
    sched = Scheduler(model, n_parallel=len(PROMPTS))
    seqs = [sched.submit(Request(case["prompt_ids"], max_tokens=_first_near_tie(case["greedy_steps"]),
                                 params=SamplingParams(temp=0.0), stop_ids=frozenset())) for case in PROMPTS]
    sched.run_all()
    for seq, case in zip(seqs, PROMPTS):
        n = _first_near_tie(case["greedy_steps"])
        assert seq.tokens == case["greedy_new_ids"][:n], case["prompt"]


@pytest.mark.parametrize("case", PROMPTS, ids=[p["prompt"] for p in PROMPTS])
def test_teacher_forced_steps_and_last_position_top20(model, case):
    prompt = case["prompt_ids"]
    top20 = case["last_position_top20"]
    top20_ids, top20_logits = [tid for tid, _ in top20], np.array([value for _, value in top20])
    for mode in (model.DEFAULT_PROMPT_ACTIVATIONS, "float"):
        model.set_prompt_activations(mode)
        logits = model.logits(prompt + case["greedy_new_ids"])
        chosen_diffs = []
        for i, step in enumerate(case["greedy_steps"]):
            row = logits[len(prompt) - 1 + i]
            if step["margin_to_2nd"] >= MARGIN:
                assert int(np.argmax(row)) == step["id"], f"{mode}: step {i}"
            chosen_diffs.append(abs(float(row[step["id"]]) - step["logit"]))

        last = logits[len(prompt) - 1]
        ours = set(np.argsort(-last)[:20].tolist())
        assert len(ours & set(top20_ids)) >= 18
        diffs = last[top20_ids] - top20_logits
        if mode == "float":
            assert np.mean(chosen_diffs) < 0.3 and max(chosen_diffs) < 1.0
        else:  # the position's common shift taken out (measured: mean 0.11-0.14, max 0.23-0.30)
            diffs = diffs - diffs.mean()
        diffs = np.abs(diffs)
        assert diffs.mean() < 0.3 and diffs.max() < 0.5, mode
    model.set_prompt_activations(model.DEFAULT_PROMPT_ACTIVATIONS)
