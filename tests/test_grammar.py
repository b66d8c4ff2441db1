"""Grammar-constrained generation in llmcli: the matcher and token filter on their own, sampled
outputs that always validate (jsonschema as the oracle) on the tiny random-weight models and the
demo model, sequences with different grammars batched together as alone, and the Python API and
`llmcli run` options. (Agreement with llama.cpp itself: test_grammar_llamacpp.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import llmcli
from llmcli.demo import demo_model_path
from llmcli.errors import BadInputError
from llmcli.generation import Request, SamplingParams, Scheduler
from llmcli.generation.grammar import (JSON_OBJECT_GBNF, Grammar, GrammarError, GrammarMatcher, compile_grammar,
                                       schema_to_grammar)
from llmcli.generation.grammar.tokens import TokenIndex
from llmcli.models import load_model
from llmcli.vocab import Tokenizer

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gguf"
TINY = ["llama-f32", "gemma3-f32"]

# Every string, number and list bounded: the grammar itself ends the output within ~250 tokens.
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "email": {"type": "string", "format": "date"},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "ç"]}, "maxItems": 3},
    "pet": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}},
                                         "required": ["kind"]}]},
    "ok": {"type": "boolean"}}, "required": ["name", "age", "tags", "ok"]}
CODE = {"type": "array", "items": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{1,3}$"}, "minItems": 1, "maxItems": 2}
SCHEMAS = {"person": PERSON, "code": CODE}


# -- parsing and the matcher on its own -----------------------------------------------------------


def test_errors_are_one_line_bad_input_naming_where():
    with pytest.raises(GrammarError) as error:
        compile_grammar('root ::= "a"\nitem ::= "b" | [c\n')
    assert isinstance(error.value, BadInputError) and error.value.kind == "unterminated"
    assert "\n" not in str(error.value) and "line 2" in str(error.value)
    with pytest.raises(GrammarError, match="rule 'nope' is used but never defined"):
        compile_grammar("root ::= nope")
    with pytest.raises(GrammarError, match="no rule 'start'"):
        compile_grammar('root ::= "a"', root="start")


def test_a_grammar_is_shared_and_compiled_once():
    text = 'root ::= "x" [0-9]+'
    assert compile_grammar(text) is compile_grammar(text)
    grammar = compile_grammar(text)
    a, b = grammar.accept_bytes(grammar.start, b"x1"), grammar.accept_bytes(grammar.start, b"x")
    assert grammar.can_end(a) and not grammar.can_end(b) and grammar.start == grammar.accept_bytes(grammar.start, b"")


class FakeTokenizer:
    """A vocabulary chosen for the edge cases: characters split over tokens, a NUL byte, an empty
    piece, a token that is a whole word, an end-of-generation token."""

    PIECES = [b"<eos>", b"a", b"b", b"ab", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xe6\x97", b"\xa5", b"\x00x", b"",
              b"a\x00b", b"ba", b"\xff", b"yes", b"no", b" "]

    n_vocab = len(PIECES)
    eog_ids = frozenset({0})

    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        return self.PIECES[token]


def _brute_mask(grammar: Grammar, matcher: GrammarMatcher, tok) -> np.ndarray:
    return np.array([matcher.allows(t) for t in range(tok.n_vocab)])


@pytest.mark.parametrize("text,prefix", [
    ('root ::= [a-b]* "é" "日"?', []), ('root ::= [a-b]* "é" "日"?', [1, 4]), ('root ::= [a-b]* "é" "日"?', [6, 7]),
    ('root ::= "yes" | "no" | "a" root', [1]), ('root ::= [^a]+', []), ('root ::= .+ "b"', [4]), ('root ::= .+ "b"', [7]),
])
def test_the_token_filter_agrees_with_one_token_checks(text, prefix):
    tok = FakeTokenizer()
    grammar = compile_grammar(text)
    matcher = GrammarMatcher(grammar, tok, tok.eog_ids)
    for token in prefix:
        matcher.accept(token)
    mask = matcher.mask()
    assert (mask == _brute_mask(grammar, matcher, tok)).all()
    assert not mask[10] and not mask[9]  # an empty piece, a piece starting with NUL: never
    assert mask[0] == matcher.can_end


def test_partial_characters_across_tokens():
    tok = FakeTokenizer()
    matcher = GrammarMatcher(compile_grammar('root ::= "é" "日"'), tok, tok.eog_ids)
    assert matcher.allows(4) and matcher.allows(6) and not matcher.allows(5) and not matcher.allows(1)
    matcher.accept(4)  # the first byte of é
    assert matcher.allows(5) and not matcher.allows(4) and not matcher.allows(0)
    matcher.accept(5)
    assert matcher.allows(7) and not matcher.allows(8)
    matcher.accept(7)
    assert matcher.allows(8) and not matcher.must_end
    matcher.accept(8)
    assert matcher.must_end and matcher.can_end and list(np.flatnonzero(matcher.mask())) == [0]


def test_token_references():
    tok = FakeTokenizer()
    grammar = compile_grammar('root ::= <[14]> " " !<[15]>')
    matcher = GrammarMatcher(grammar, tok, tok.eog_ids)
    assert list(np.flatnonzero(matcher.mask())) == [14]
    matcher.accept(14)
    matcher.accept(16)
    allowed = set(np.flatnonzero(matcher.mask()))
    assert 15 not in allowed and {1, 2, 14} <= allowed and 0 not in allowed
    matcher.accept(2)
    assert matcher.must_end


def test_the_token_index_is_built_once_per_tokenizer():
    tok = FakeTokenizer()
    index = TokenIndex.of(tok)
    assert TokenIndex.of(tok) is index
    assert index.piece(11) == b"a" and 10 not in index.order and 9 not in index.order  # cut at NUL


# -- generation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    loaded = {}

    def get(name):
        if name not in loaded:
            model = load_model(REFERENCE / f"{name}.gguf", threads=1, ctx_size=512)
            loaded[name] = (model, Tokenizer.from_gguf(model.reader))
        return loaded[name]

    return get


def _sampled(model, tok, grammar, seeds, max_tokens=400, n_parallel=1):
    sched = Scheduler(model, tok, n_parallel=n_parallel)
    seqs = [sched.submit(Request(tok.tokenize("Hello"), max_tokens=max_tokens, grammar=grammar,
                                 params=SamplingParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)))
            for seed in seeds]
    sched.run_all()
    return seqs


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("schema", SCHEMAS, ids=list(SCHEMAS))
def test_sampled_outputs_of_random_weights_validate(tiny, name, schema):
    """Random weights at temperature 1 (every token possible): the grammar alone shapes the output."""
    model, tok = tiny(name)
    grammar = compile_grammar(schema_to_grammar(SCHEMAS[schema]))
    for seq in _sampled(model, tok, grammar, seeds=range(4), n_parallel=4):
        assert seq.stop_reason == "eos", seq.text
        jsonschema.validate(json.loads(seq.text), SCHEMAS[schema])


@pytest.mark.parametrize("name", TINY)
def test_gbnf_output_matches_its_grammar(tiny, name):
    model, tok = tiny(name)
    grammar = compile_grammar('root ::= "<" [a-c]{2,4} ">" (" " [0-9])? "!"')
    for seq in _sampled(model, tok, grammar, seeds=range(3), n_parallel=3):
        assert seq.stop_reason == "eos" and grammar.matches(seq.text), seq.text


def test_demo_model_sampled_outputs_validate():
    model = load_model(demo_model_path(), threads=1, ctx_size=512)
    tok = Tokenizer.from_gguf(model.reader)
    for schema in SCHEMAS.values():
        grammar = compile_grammar(schema_to_grammar(schema))
        for seq in _sampled(model, tok, grammar, seeds=range(3), n_parallel=3):
            assert seq.stop_reason == "eos", seq.text
            jsonschema.validate(json.loads(seq.text), schema)


@pytest.mark.parametrize("name", TINY)
def test_different_grammars_batched_equal_alone(tiny, name):
    """Sequences with different grammars (and one without), greedy and sampled, decoded together
    in one batch give each its tokens alone."""
    model, tok = tiny(name)
    grammars = [compile_grammar(schema_to_grammar(PERSON)), compile_grammar(schema_to_grammar(CODE)),
                compile_grammar('root ::= [a-z ]{3,20} "."'), None, compile_grammar(JSON_OBJECT_GBNF)]
    prompts = [tok.tokenize(p) for p in ("Hi", "A longer prompt here", "x", "Once upon", "{")]
    params = [SamplingParams(temp=0.0), SamplingParams(temp=0.9, seed=3), SamplingParams(temp=0.0),
              SamplingParams(temp=1.0, seed=5), SamplingParams(temp=1.0, seed=7)]

    def run(indices, n_parallel):
        sched = Scheduler(model, tok, n_parallel=n_parallel)
        seqs = [sched.submit(Request(prompts[i], max_tokens=60, params=params[i], grammar=grammars[i]))
                for i in indices]
        sched.run_all()
        return [(s.tokens, s.stop_reason) for s in seqs]

    alone = [run([i], 1)[0] for i in range(5)]
    assert run(range(5), 5) == alone
    assert run(range(5), 2) == alone  # more requests than slots: some wait, then join the batch


def test_end_of_generation_only_where_the_grammar_is_complete(tiny):
    model, tok = tiny("llama-f32")
    grammar = compile_grammar('root ::= "ab" | "ab" "c"+')
    for seq in _sampled(model, tok, grammar, seeds=range(6), n_parallel=3, max_tokens=50):
        assert seq.text.startswith("ab") and set(seq.text[2:]) <= {"c"}
        assert seq.stop_reason in ("eos", "length")
    must_end = compile_grammar('root ::= "abc"')
    [seq] = _sampled(model, tok, must_end, seeds=[1])
    assert seq.text == "abc" and seq.stop_reason == "eos"


def test_a_grammar_needs_a_tokenizer(tiny):
    model, tok = tiny("llama-f32")
    with pytest.raises(BadInputError, match="tokenizer"):
        Scheduler(model).submit(Request([1, 2], grammar=compile_grammar('root ::= "a"')))
    with pytest.raises(BadInputError, match="Grammar"):
        Scheduler(model, tok).submit(Request([1, 2], grammar='root ::= "a"'))


# -- the Python API and `llmcli run` ------------------------------------------------------------


@pytest.fixture(scope="module")
def llm():
    return llmcli.load(REFERENCE / "llama-f32.gguf", threads=1, ctx_size=512)


def test_api_grammar_and_json_schema(llm):
    text = llm.complete("Hi", max_tokens=30, params=SamplingParams(temp=0), grammar='root ::= "x" [0-9]{2}').run().text
    assert text[0] == "x" and len(text) == 3 and text[1:].isdigit()
    out = "".join(llm.generate("Hi", max_tokens=300, json_schema=PERSON, temp=1.0, seed=2))
    jsonschema.validate(json.loads(out), PERSON)
    reply = "".join(llm.chat([{"role": "user", "content": "Hi"}], max_tokens=300, json_schema=CODE, seed=1))
    jsonschema.validate(json.loads(reply), CODE)
    many = llm.complete_many(["a", "b"], max_tokens=300, json_schema=CODE, params=SamplingParams(temp=1, seed=4))
    for done in many:
        jsonschema.validate(json.loads(done.text), CODE)
    with pytest.raises(GrammarError, match="not both"):
        llm.complete("Hi", grammar='root ::= "a"', json_schema={})
    with pytest.raises(GrammarError, match="line 1"):
        llm.complete("Hi", grammar='root ::= "a')
    with pytest.raises(GrammarError, match="'multipleOf' is not supported"):
        llm.complete("Hi", json_schema={"type": "integer", "multipleOf": 3})


REPO = Path(__file__).resolve().parents[1]


def test_cli_grammar_options(cli, tmp_path):
    model = REFERENCE / "llama-f32.gguf"
    grammar_file = tmp_path / "g.gbnf"
    grammar_file.write_text('root ::= "y" ("es" | "o")\n')
    res = cli("run", "-m", model, "-p", "Hi", "--grammar-file", grammar_file, "--temp", "0", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["text"] in ("yes", "yo")
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(CODE))
    for schema in (schema_file, json.dumps(CODE)):
        res = cli("run", "-m", model, "-p", "Hi", "--json-schema", schema, "--seed", "3", "-n", "300", "--json")
        assert res.exit_code == 0, res.stderr
        jsonschema.validate(json.loads(json.loads(res.stdout)["text"]), CODE)
    res = cli("run", "-m", model, "-p", "Hi", "--grammar", 'root ::= "a"', "-n", "5")
    assert res.exit_code == 0 and res.stdout.strip() == "a"


@pytest.mark.parametrize("args,message", [
    (["--grammar", 'root ::= "a" | missing'], "rule 'missing' is used but never defined"),
    (["--grammar-file", "/nonexistent/g.gbnf"], "cannot read the grammar file"),
    (["--json-schema", '{"type": "number", "maximum": 3}'], "'maximum' is not supported"),
    (["--json-schema", "{not json"], "not valid JSON"),
    (["--json-schema", "missing.json"], "neither a readable file"),
    (["--grammar", 'root ::= "a"', "--json-schema", "{}"], "not --grammar and --json-schema"),
])
def test_cli_bad_grammars_are_one_red_line(cli, args, message):
    res = cli("run", "-m", REFERENCE / "llama-f32.gguf", "-p", "Hi", *args)
    assert res.exit_code == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_grammar_file_error_names_the_file(cli, tmp_path):
    bad = tmp_path / "bad.gbnf"
    bad.write_text('root ::= "a"\nx ::= "\\q"\n')
    res = cli("run", "-m", REFERENCE / "llama-f32.gguf", "-p", "Hi", "--grammar-file", bad)
    assert res.exit_code == 1 and str(bad) in res.stderr and "line 2" in res.stderr and "unknown escape" in res.stderr
