"""Grammars and JSON schemas against the reference llama.cpp (tests/data/grammar/llamacpp.json,
recorded by scripts/make_grammar_refs.py from the corpus in tests/data/grammar/corpus.json):

* every schema llama.cpp converts gives the same GBNF text here, and the same accept/reject verdict
  for every document; schemas llama.cpp would turn into a weaker grammar are refused, naming the
  keyword; schemas llama.cpp rejects are rejected;
* every raw GBNF grammar gives llama.cpp's verdict for every string (also fed in byte pieces that
  split characters), and malformed grammars fail with the kind of error llama.cpp reports;
* on the demo model's 262k-token vocabulary, the tokens allowed after a prefix are exactly
  llama.cpp's (end-of-generation tokens included);
* greedy constrained generation on the demo model is llama-server's token for token, except where
  the path reaches a near-tie in llama.cpp's own logits (top two allowed within 0.5, the size of the
  float differences between the two engines; see test_engine_demo.py), and is identical for at
  least ten of the cases.
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from llmcli.demo import demo_model_path
from llmcli.generation import Request, SamplingParams, Scheduler
from llmcli.generation.grammar import (JSON_OBJECT_GBNF, GrammarError, compile_grammar, schema_to_grammar)
from llmcli.gguf import GGUFReader
from llmcli.models import load_model
from llmcli.vocab import Tokenizer

REF = json.loads((Path(__file__).parent / "data" / "grammar" / "llamacpp.json").read_text(encoding="utf-8"))
MARGIN = 0.5
CONVERTED = [s for s in REF["schemas"] if not s.get("refused") and not s.get("error")]


def _gbnf(case: dict) -> str:
    if "schema" in case:
        return schema_to_grammar(case["schema"])
    return JSON_OBJECT_GBNF if case["gbnf"] == "@JSON_OBJECT" else case["gbnf"]


def test_the_corpus_is_large_enough():
    assert len(CONVERTED) >= 30 and sum(len(s["docs"]) for s in CONVERTED) >= 300
    assert len(REF["grammars"]) >= 10 and len(REF["bad_grammars"]) >= 15 and len(REF["greedy"]) >= 10


@pytest.mark.parametrize("case", CONVERTED, ids=[s["name"] for s in CONVERTED])
def test_schema_gives_llamacpps_grammar_and_verdicts(case):
    assert case["llamacpp_gbnf"], "llama.cpp converted it"
    gbnf = schema_to_grammar(case["schema"])
    assert gbnf == case["llamacpp_gbnf"]
    grammar = compile_grammar(gbnf)
    for doc in case["docs"]:
        assert grammar.matches(doc["text"]) == doc["accepted"], doc["text"]


@pytest.mark.parametrize("case", CONVERTED, ids=[s["name"] for s in CONVERTED])
def test_what_a_schema_grammar_accepts_validates(case):
    """The grammar never admits a document the schema refuses (jsonschema as the oracle)."""
    grammar = compile_grammar(schema_to_grammar(case["schema"]))
    validator = schema_validator(case["schema"])
    for doc in case["docs"]:
        if grammar.matches(doc["text"]):
            validator.validate(json.loads(doc["text"]))


def schema_validator(schema: dict):
    """jsonschema's validator for the schema: draft 2020-12, or draft 7 for its list-form items."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        return jsonschema.Draft202012Validator(schema)
    except jsonschema.SchemaError:
        jsonschema.Draft7Validator.check_schema(schema)
        return jsonschema.Draft7Validator(schema)


REFUSED = [s for s in REF["schemas"] if s.get("refused")]


@pytest.mark.parametrize("case", REFUSED, ids=[s["name"] for s in REFUSED])
def test_schemas_llamacpp_would_weaken_are_refused_naming_the_keyword(case):
    assert case["llamacpp_gbnf"] is not None  # llama.cpp converts it, ignoring the keyword
    with pytest.raises(GrammarError) as error:
        schema_to_grammar(case["schema"])
    assert case["refused"] in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("case", [s for s in REF["schemas"] if s.get("error")],
                         ids=[s["name"] for s in REF["schemas"] if s.get("error")])
def test_schemas_llamacpp_rejects_are_rejected(case):
    assert case["llamacpp_error"]
    with pytest.raises(GrammarError) as error:
        schema_to_grammar(case["schema"])
    assert "\n" not in str(error.value)


def test_json_object_mode_is_llamacpps_object_schema():
    assert JSON_OBJECT_GBNF == schema_to_grammar({"type": "object"})
    [case] = [s for s in REF["schemas"] if s["schema"] == {"type": "object"}]
    assert JSON_OBJECT_GBNF == case["llamacpp_gbnf"]


@pytest.mark.parametrize("case", REF["grammars"], ids=[g["name"] for g in REF["grammars"]])
def test_grammar_verdicts(case):
    grammar = compile_grammar(_gbnf(case))
    for string in case["strings"]:
        assert grammar.matches(string["text"]) == string["accepted"], string["text"]


@pytest.mark.parametrize("case", REF["split_strings"], ids=[g["name"] for g in REF["split_strings"]])
def test_characters_split_across_pieces(case):
    grammar = compile_grammar(case["gbnf"])
    for split in case["cases"]:
        state = grammar.start
        for piece in split["pieces"]:
            state = grammar.accept_bytes(state, bytes.fromhex(piece)) if state is not None else None
        assert (state is not None and grammar.can_end(state)) == split["accepted"], split["pieces"]


@pytest.mark.parametrize("case", REF["bad_grammars"], ids=[g["name"] for g in REF["bad_grammars"]])
def test_bad_grammars_fail_as_in_llamacpp(case):
    with pytest.raises(GrammarError) as error:
        compile_grammar(case["gbnf"])
    assert error.value.kind == case["kind"], (str(error.value), case["llamacpp_message"])
    assert "\n" not in str(error.value) and str(error.value).startswith("grammar")


# -- the demo model's vocabulary and greedy paths -----------------------------------------------


@pytest.fixture(scope="module")
def demo_tokenizer():
    with GGUFReader(demo_model_path()) as reader:
        return Tokenizer.from_gguf(reader)


def _reference_mask(state: dict, n_vocab: int) -> np.ndarray:
    if "allowed" in state:
        mask = np.zeros(n_vocab, bool)
        mask[state["allowed"]] = True
        return mask
    packed = np.frombuffer(zlib.decompress(base64.b64decode(state["mask_zlib_b64"])), np.uint8)
    return np.unpackbits(packed, count=n_vocab).astype(bool)


@pytest.mark.parametrize("case", REF["masks"], ids=[m["name"] for m in REF["masks"]])
def test_allowed_tokens_equal_llamacpps_on_the_demo_vocabulary(case, demo_tokenizer):
    from llmcli.generation.grammar import GrammarMatcher

    assert demo_tokenizer.n_vocab == REF["n_vocab"] == 262144
    grammar = compile_grammar(_gbnf(case))
    for state in case["states"]:
        matcher = GrammarMatcher(grammar, demo_tokenizer, demo_tokenizer.eog_ids)
        for token in state["prefix_ids"]:
            assert matcher.allows(token)
            matcher.accept(token)
        mask = matcher.mask()
        want = _reference_mask(state, demo_tokenizer.n_vocab)
        assert want.sum() == state["n_allowed"]
        wrong = np.flatnonzero(mask != want)
        assert len(wrong) == 0, (state["prefix"], [(int(t), demo_tokenizer.token_to_piece(int(t)), bool(want[t]))
                                                   for t in wrong[:10]])
        # the one-token check agrees with the mask, for a sample of both verdicts
        rng = np.random.default_rng(len(state["prefix"]))
        for token in rng.choice(demo_tokenizer.n_vocab, 300, replace=False):
            assert matcher.allows(int(token)) == bool(want[token])


@pytest.fixture(scope="module")
def demo_model():
    return load_model(demo_model_path(), threads=1, ctx_size=512)


def _divergence(ours: list[int], theirs: list[int]) -> int | None:
    """First step where the paths differ (one ended, the other went on), None if identical."""
    if ours == theirs:
        return None
    return next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))


@pytest.fixture(scope="module")
def greedy_runs(demo_model, demo_tokenizer):
    """Every greedy case, decoded together (continuous batching: each as alone)."""
    sched = Scheduler(demo_model, demo_tokenizer, n_parallel=4)
    seqs = [sched.submit(Request(case["prompt_ids"], max_tokens=case["n_predict"], params=SamplingParams(temp=0.0),
                                 grammar=compile_grammar(_gbnf(case)))) for case in REF["greedy"]]
    sched.run_all()
    return seqs


@pytest.mark.parametrize("index", range(len(REF["greedy"])), ids=[c["name"] for c in REF["greedy"]])
def test_greedy_constrained_output_is_llamacpps_up_to_a_near_tie(greedy_runs, index):
    case, seq = REF["greedy"], greedy_runs[index]
    case = case[index]
    step = _divergence(seq.tokens, case["llamacpp_ids"])
    if step is None:
        # same tokens, and the same ending: llama.cpp sampled end-of-generation or hit n_predict
        assert seq.stop_reason == ("eos" if case["ended_with_eog"] else "length")
    else:
        margin = case["steps"][step]["margin"]
        assert margin is not None and margin < MARGIN, (step, seq.text, case["llamacpp_text"])


def test_greedy_constrained_output_equals_llamacpps_in_at_least_ten_cases(greedy_runs):
    same = [c["name"] for c, seq in zip(REF["greedy"], greedy_runs) if seq.tokens == c["llamacpp_ids"]]
    assert len(same) >= 10, same
