"""Sampling: llama.cpp's chain (penalties -> top-k -> top-p -> min-p -> temperature -> draw) on crafted
logits, where the right answer can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcli.generation.sampling import Sampler, SamplingParams, top_k_ids
from llmcli.errors import BadInputError


def _logits_for(probs):
    return np.log(np.asarray(probs, dtype=np.float32))


def test_greedy_takes_the_argmax():
    s = Sampler(SamplingParams(temp=0))
    assert s.sample(np.array([0.1, 3.0, 2.9, -1], np.float32)) == 1


def test_top_k_keeps_the_k_best():
    s = Sampler(SamplingParams(top_k=3, top_p=1.0, min_p=0.0))
    ids, _ = s.candidates(np.array([5, 1, 4, 3, 2, 0], np.float32))
    assert ids.tolist() == [0, 2, 3]


@pytest.mark.parametrize("n", [262144, 262144 + 777, 150000, 5000])  # 5000: below 2k chunks, plain partition
def test_top_k_over_a_large_vocabulary_is_the_exact_top_k(n):
    """The chunk-maxima threshold path (vocabularies >= 2k chunks) returns exactly the k best."""
    rng = np.random.default_rng(n)
    logits = (rng.standard_normal(n) * 3).astype(np.float32)
    logits[rng.integers(0, n, 30)] = 25.0  # many of the best in a few chunks
    logits[n - 1] = 30.0  # the very best in the partial last chunk
    for k in (1, 40, 64):
        got = np.sort(top_k_ids(logits, k))
        want = np.sort(np.argsort(-logits, kind="stable")[:k])
        assert np.array_equal(np.sort(logits[got]), np.sort(logits[want])), (n, k)
        assert len(set(got.tolist())) == k


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = [0.5, 0.3, 0.15, 0.05]
    s = Sampler(SamplingParams(top_k=0, top_p=0.8, min_p=0.0))
    assert s.candidates(_logits_for(probs))[0].tolist() == [0, 1]  # 0.5 + 0.3 reaches 0.8
    s = Sampler(SamplingParams(top_k=0, top_p=0.81, min_p=0.0))
    assert s.candidates(_logits_for(probs))[0].tolist() == [0, 1, 2]
    s = Sampler(SamplingParams(top_k=0, top_p=0.1, min_p=0.0))
    assert s.candidates(_logits_for(probs))[0].tolist() == [0]  # always at least one


def test_top_p_uses_the_mass_left_after_top_k():
    probs = [0.4, 0.3, 0.2, 0.1]
    # after top-k 2 the renormalised masses are 4/7 and 3/7: top-p 0.5 keeps one
    s = Sampler(SamplingParams(top_k=2, top_p=0.5, min_p=0.0))
    assert s.candidates(_logits_for(probs))[0].tolist() == [0]


def test_min_p_is_relative_to_the_best_token():
    probs = [0.5, 0.2, 0.1, 0.04, 0.16]
    s = Sampler(SamplingParams(top_k=0, top_p=1.0, min_p=0.3))  # threshold 0.15
    assert s.candidates(_logits_for(probs))[0].tolist() == [0, 1, 4]


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    s = Sampler(SamplingParams(temp=0, repeat_penalty=2.0, repeat_last_n=2))
    for t in (0, 1, 2):
        s.accept(t)  # window of 2: tokens 1 and 2
    out = s.apply_penalties(np.array([4.0, 4.0, -1.0, 3.0], np.float32))
    assert out.tolist() == [4.0, 2.0, -2.0, 3.0]
    assert s.sample(np.array([4.0, 4.5, -1.0, 3.0], np.float32)) == 0  # 4.5 / 2 < 4


def test_same_seed_same_tokens_and_distribution():
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.125], np.float32))
    params = SamplingParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a = [Sampler(params).sample(logits) for _ in range(3)]
    s1, s2 = Sampler(params), Sampler(params)
    draws1 = [s1.sample(logits) for _ in range(4000)]
    assert draws1 == [s2.sample(logits) for _ in range(4000)]
    assert len(set(a)) == 1
    freq = np.bincount(draws1, minlength=4) / 4000
    assert np.allclose(freq, [0.5, 0.25, 0.125, 0.125], atol=0.03)


def test_temperature_sharpens():
    logits = np.log(np.array([0.6, 0.4], np.float32))
    s = Sampler(SamplingParams(temp=0.25, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    freq = np.mean([s.sample(logits) == 0 for _ in range(3000)])
    expected = 0.6**4 / (0.6**4 + 0.4**4)
    assert math.isclose(freq, expected, abs_tol=0.03)


@pytest.mark.parametrize("kwargs, message", [
    ({"temp": -1}, "--temp"), ({"top_p": 2}, "--top-p"), ({"top_p": 0}, "--top-p"),
    ({"min_p": 1.5}, "--min-p"), ({"top_k": -3}, "--top-k"), ({"repeat_penalty": 0}, "--repeat-penalty"),
    ({"repeat_last_n": -2}, "--repeat-last-n"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        SamplingParams(**kwargs).validate()
