"""Property-based fuzzing (hypothesis) of the four parsers that read what strangers wrote.

Targets, each run for the `ci` profile's 10,000 derandomized cases (tests/conftest.py):

* the GGUF reader: bytes flipped, integers set to extreme values, bytes inserted or cut, the file
  truncated, in two seeds (a small GGUF the project's writer makes with every metadata value type,
  and a real tiny llama GGUF from tests/data), and random bytes after a valid magic and version;
* the safetensors header parser: JSON headers built from a grammar (good entries, wrong types,
  negative, huge and overflowing shapes, bad offsets, deep nesting), mutated real headers, and
  extreme header-length fields;
* the runtime tokenizer: any Unicode text (surrogates included) mixed with special-token texts,
  SentencePiece's "▁", byte-token lookalikes and long runs, tokenized and detokenized by the demo
  model's Gemma 3 vocabulary, the tiny qwen2 (byte-level BPE) and llama (SPM) GGUFs;
* the chat-template renderer: templates built from a Jinja grammar of loops, macros, recursion,
  big numbers, string builders, every filter and attribute paths to Python internals.

Every case must end in a result or in one of our one-line errors (`LlmcliError`); anything else is
a crash and fails the test with the case that caused it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, note, strategies as st

from llmcli.errors import BadInputError, LlmcliError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
FUZZ_EXAMPLES = 10_000  # the ci profile's (tests/conftest.py)


class _Quiet(list):
    """A fixture value hypothesis would otherwise print in full (hundreds of KB) with a failing case."""

    def __repr__(self) -> str:
        return f"<{len(self)} items>"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- two cores: the safetensors and chat targets run in a second pytest process ------------------------
#
# The four targets take ~3.5 min of CPU together, mostly hypothesis's own per-case work. The two
# tests below the tokenizer's are run by a child `pytest` (started with the module, environment
# LLMCLI_FUZZ_CHILD=1) while this process runs the GGUF and tokenizer targets; each then passes or
# fails as the child's run of it did, with the child's report. LLMCLI_FUZZ_SERIAL=1 runs all here.

CHILD_ENV, SERIAL_ENV = "LLMCLI_FUZZ_CHILD", "LLMCLI_FUZZ_SERIAL"
IN_CHILD_TESTS = ("test_fuzz_safetensors_header", "test_fuzz_chat_templates_stay_sandboxed")


class _FuzzChild:
    def __init__(self, selected: list[str]):
        self.proc, self.output = None, None
        if not selected or os.environ.get(CHILD_ENV) or os.environ.get(SERIAL_ENV):
            return
        from hypothesis import settings

        profile = "ci" if settings().max_examples >= FUZZ_EXAMPLES else "dev"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:warnings",
             f"--hypothesis-profile={profile}", *[f"{__file__}::{name}" for name in selected]],
            cwd=ROOT, env={**os.environ, CHILD_ENV: "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)

    def run_or_wait(self, name: str, run) -> None:
        if self.proc is None:
            run()
            return
        if self.output is None:
            self.output, _ = self.proc.communicate(timeout=3000)
        if not re.search(rf"^PASSED \S*::{name}\b", self.output, re.M):
            pytest.fail(f"{name} failed in the second process:\n{self.output}", pytrace=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def fuzz_child(request):
    """Started with the module's first test, so the child works while this process does."""
    selected = [item.name for item in request.session.items
                if item.module is request.module and item.name in IN_CHILD_TESTS]
    child = _FuzzChild(selected)
    yield child
    child.stop()


def _write(path: Path, data: bytes) -> Path:
    """Rewrite `path` in place (opening with O_TRUNC costs ~2 ms on ext4: more than a case)."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(data)
        f.truncate()
    return path


# ---- the GGUF reader -------------------------------------------------------------------------------

def _tiny_gguf(path: Path) -> bytes:
    """A small GGUF with a value of every metadata type and three tensors (F32, F16, Q8_0)."""
    from llmcli.gguf import GGUFWriter
    from llmcli.gguf.constants import GGMLType, ValueType
    from llmcli.gguf.reader import MetadataValue

    w = GGUFWriter(path, force=True)
    w.add_string("general.architecture", "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_int32("llama.int32", -5)
    w.add_uint64("llama.uint64", 1 << 40)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("llama.bool", True)
    w.add_scalar("llama.u8", 7, ValueType.UINT8)
    w.add_scalar("llama.i16", -3, ValueType.INT16)
    w.add_scalar("llama.f64", 0.5, ValueType.FLOAT64)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b", "ab", "▁c"], ValueType.STRING)
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0, -4.0], ValueType.FLOAT32)
    w.add_array("llama.i64s", [1, -2, 3], ValueType.INT64)
    w.add("llama.nested", MetadataValue(ValueType.ARRAY, [
        MetadataValue(ValueType.ARRAY, np.array([1, 2], np.uint8), ValueType.UINT8),
        MetadataValue(ValueType.ARRAY, ["x", "yz"], ValueType.STRING)], ValueType.ARRAY))
    w.add_tensor_info("a.weight", (32, 2), GGMLType.F32)
    w.add_tensor_info("b.weight", (32,), GGMLType.F16)
    w.add_tensor_info("c.weight", (64, 2), GGMLType.Q8_0)
    with w.open():
        w.write_tensor_data("a.weight", np.arange(64, dtype=np.float32))
        w.write_tensor_data("b.weight", np.ones(32, np.float16))
        w.write_tensor_data("c.weight", np.zeros(4 * 34, np.uint8))
    return path.read_bytes()


@pytest.fixture(scope="module")
def gguf_seeds(scratch) -> list[tuple[bytes, int]]:
    """(file bytes, header size) of the two seeds."""
    from llmcli.gguf import GGUFReader

    real = DATA / "rope" / "linear" / "model-f16.gguf"  # a real tiny llama (99 KB, 1000 tokens)
    seeds = []
    for path in (scratch / "seed.gguf", real):
        data = _tiny_gguf(path) if path.parent == scratch else path.read_bytes()
        with GGUFReader(path) as r:
            seeds.append((data, r.header_size))
    return _Quiet(seeds)


EXTREME_INTS = [0, 1, 2, 3, 8, 9, 12, 13, 31, 32, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                2**40, 2**60, 2**62, 2**63 - 1, 2**63, 2**64 - 1]

# One mutation = (kind, position, argument), three draws: generation stays cheap next to the parse.
MUTATION_ARGS = [b"\0", b"\xff", b"\x7f\xff\xff\xff", b"\xff" * 8, b"GGUF", b"\n", b"\x09\0\0\0",
                 b"\x08\0\0\0", b"\x0c\0\0\0", b"\xc3\x28", b"\xed\xa0\x80", bytes(range(16)), b"{", b"}",
                 b'"', b"[", b"]", b":", b",", b"-1", b"1e999", b"\\u0000", b'"dtype"', b"null"] + EXTREME_INTS
mutation = st.tuples(st.sampled_from(["flip", "u32", "u64", "insert", "delete", "truncate"]),
                     st.integers(0, 1 << 20), st.sampled_from(MUTATION_ARGS))


def _mutate(seed: bytes, header_size: int, ops) -> bytes:
    data = bytearray(seed)
    for kind, pos, arg in ops:
        # mostly inside the header (where the parser works), sometimes anywhere
        pos = pos % (header_size + 64) if pos % 8 else pos % max(1, len(data))
        raw = arg if isinstance(arg, bytes) else struct.pack("<Q", arg)
        number = arg if isinstance(arg, int) else int.from_bytes(arg[:8].ljust(8, b"\0"), "little")
        if kind == "flip":
            data[pos:pos + len(raw)] = raw
        elif kind == "u32":
            data[pos:pos + 4] = struct.pack("<I", number & 0xFFFFFFFF)
        elif kind == "u64":
            data[pos:pos + 8] = struct.pack("<Q", number)
        elif kind == "insert":
            data[pos:pos] = raw
        elif kind == "delete":
            del data[pos:pos + 1 + number % 64]
        else:
            del data[pos:]
    return bytes(data)


def _read_gguf(path: Path) -> None:
    """Open and use a GGUF as the engine does; only LlmcliError may come out."""
    from llmcli.gguf import GGUFReader

    with GGUFReader(path) as r:
        for key, mv in r.metadata.items():
            if mv.item_type is None:  # scalars as the engine reads them (arrays stay as stored)
                r.get(key)
        for t in r.tensors:
            assert r.tensor_bytes(t).nbytes == t.n_bytes
            assert r.data_offset + t.offset + t.n_bytes <= r.file_size


gguf_case = st.one_of(
    # seed 0 (small, allocations traced) twice as often as seed 1 (the real file: 2 ms to parse)
    st.tuples(st.just("mutated"), st.sampled_from([0, 0, 1]), st.lists(mutation, min_size=1, max_size=4)),
    st.tuples(st.just("random"), st.sampled_from([2, 3]),
              st.tuples(st.sampled_from(EXTREME_INTS), st.sampled_from(EXTREME_INTS), st.binary(max_size=512))),
)


@given(case=gguf_case)
@example(case=("mutated", 0, [("u64", 16, 2**60)]))  # metadata count 2^60 (offset 16)
@example(case=("mutated", 0, [("u32", 619, b"\xc3(")]))  # found by this test: shape (2.9e18, 0)
@example(case=("random", 3, (0, 0, b"")))  # an empty GGUF
def test_fuzz_gguf_reader(scratch, gguf_seeds, case):
    kind, a, b = case
    if kind == "mutated":
        seed, header_size = gguf_seeds[a]
        data = _mutate(seed, header_size, b)
    else:
        n_tensors, n_kv, rest = b
        data = b"GGUF" + struct.pack("<IQQ", a, n_tensors, n_kv) + rest
    path = _write(scratch / "fuzz.gguf", data)
    # Allocations are traced for the small seed and the random headers (tracing the real seed's
    # 1000-token vocabulary would cost 10x the case): the same count and length fields are in both.
    traced = kind == "random" or a == 0
    with _allocations(traced) as peak:
        try:
            _read_gguf(path)
        except LlmcliError as e:
            assert "fuzz.gguf" in str(e)
            assert "\n" not in str(e) or b"\n" in data, str(e)  # only a quoted name may hold a newline
    # nothing allocated beyond what the file's own bytes justify (short strings take ~8x their size)
    assert peak[0] < 16 * len(data) + (1 << 20), f"{peak[0]} bytes for a {len(data)}-byte file"


@contextlib.contextmanager
def _allocations(traced: bool = True):
    """Yields a one-item list that holds, after the block, the peak bytes allocated within it
    (0 when not `traced`)."""
    if not traced:
        yield [0]
        return
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    peak = [0]
    try:
        yield peak
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1] - before
        if started:
            tracemalloc.stop()


def test_headers_claiming_huge_counts_fail_fast_without_allocating(scratch):
    """2^60 of everything: metadata entries, tensors, array items of each type, string bytes,
    tensor dimensions. Each must be a FormatError within a second and a few hundred KB."""
    from llmcli.errors import FormatError
    from llmcli.gguf.constants import ValueType

    def kv(key: bytes, vtype: int, body: bytes) -> bytes:
        return struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + body

    huge = 2**60
    cases = {
        "metadata count": b"GGUF" + struct.pack("<IQQ", 3, 0, huge),
        "tensor count": b"GGUF" + struct.pack("<IQQ", 3, huge, 0),
        "string length": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", huge) + b"k",
        "nested arrays": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv(b"k", ValueType.ARRAY,
                                                                    struct.pack("<IQ", ValueType.ARRAY, huge)),
        "tensor dims": b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"t"
        + struct.pack("<I", 4) + struct.pack("<4Q", huge, huge, huge, huge) + struct.pack("<IQ", 0, 0),
    }
    for vtype in ValueType:
        if vtype != ValueType.ARRAY:
            cases[f"array of {vtype.name}"] = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv(
                b"k", ValueType.ARRAY, struct.pack("<IQ", vtype, huge))
    for name, data in cases.items():
        path = _write(scratch / "huge.gguf", data + b"\0" * 256)
        started = time.monotonic()
        with _allocations() as peak, pytest.raises(FormatError) as info:
            _read_gguf(path)
        assert time.monotonic() - started < 1, name
        assert peak[0] < 256 << 10, f"{name}: {peak[0]} bytes"
        assert "huge.gguf" in str(info.value), name


# ---- the safetensors header parser ----------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "Q4", ""]
JSON_VALUES = [None, True, False, 0, 1, -1, 7, 2**31, 2**63, 2**64 + 1, -2**70, 0.5, 1e308, float("inf"),
               float("nan"), "", "F32", "x", "\u0000", "\ud800", [], [1], [-1], [1.5], ["1"], [True], [None],
               [[2]], [2**64], [0, 4], [4, 0], [0, 4, 8], {}, {"dtype": "F32"}, {"a": {"b": [1, {"c": None}]}}]
json_values = st.sampled_from(JSON_VALUES)
SHAPES = [[], [0], [1], [4], [2, 2], [1, 64], [64, 1000], [-1], [2**31, 2**31], [2**62, 4], [2**64 + 3], [1.0],
          ["2"], [True], [None], [[2]], [1, 2, 3, 4, 5]] + JSON_VALUES
OFFSETS = [[0, 0], [0, 4], [0, 8], [4, 8], [0, 16], [0, 256], [8, 4], [-4, 0], [0, -4], [0, 2**64], [2**63, 2**63 + 4],
           [0, 4096], [0, 4097], [0.0, 4.0], ["0", "4"], [True, 5], [0], [0, 4, 8]] + JSON_VALUES
# every (dtype, shape, offsets) combination, plus entries that are not objects at all
ENTRIES = [{"dtype": d, "shape": sh, "data_offsets": o} for d in DTYPES + [1, None, ["F32"]]
           for sh in SHAPES for o in OFFSETS] + JSON_VALUES + [{"shape": [1]}, {"dtype": "F32", "shape": [1]}]
entry = st.sampled_from(ENTRIES)
names = st.sampled_from(["a", "b.weight", "__metadata__", "", "x\ny", "\u00e9", "model.embed_tokens.weight"])
header_json = st.dictionaries(names, entry, max_size=4).map(lambda d: json.dumps(d, allow_nan=True).encode())


def _safetensors_file(header: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def _parse_safetensors(path: Path) -> None:
    from llmcli.convert.checkpoint import read_safetensors_header

    size = path.stat().st_size
    tensors = read_safetensors_header(path)
    for t in tensors:
        assert 8 <= t.offset and t.offset + t.n_bytes <= size and t.n_bytes >= 0, t
    small = [t for t in tensors if 0 < t.n_bytes <= 4096 and t.shape and t.shape[0] > 0]
    if small:  # reading one: the offsets point inside the file
        assert small[0].load_rows(0, 1).shape[0] == 1


# ---- the tokenizer ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizers() -> dict:
    from llmcli import demo
    from llmcli.vocab import Tokenizer
    from llmcli.gguf import GGUFReader

    out = {}
    for name, path in (("demo", demo.demo_model_path()), ("qwen2", DATA / "gguf_ref" / "qwen2-f16.gguf"),
                       ("llama", DATA / "gguf_ref" / "llama-f16.gguf")):
        with GGUFReader(path) as reader:
            out[name] = Tokenizer.from_gguf(reader)
    return out


FRAGMENTS = ["▁", "▁▁", " ", "  ", "\n", "\r\n", "\t", "\x00", "<0x0A>", "<0xE4>", "<s>", "</s>", "<unk>", "<bos>",
             "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
             "[multimodal]", "<mask>", "é", "e\u0301", "中文", "🙂", "👩‍👩‍👧", "\u200d", "\ufeff", "\U0010ffff", "\ud83d",
             "\udfff", "a" * 64, " " * 64, "0123456789" * 5, "'s", "'ll", "!!", "...", "\u2028", "ǅ", "ﷺ"]
text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=6).map("".join)


def _expected_round_trip(name: str, text: str, plain_ids: list[int], ids: list[int], parse_special: bool):
    """What detokenize(tokenize(text)) gives in llama.cpp, or None when it makes no promise.

    * SentencePiece vocabularies (demo, llama) write spaces as "▁" and turn every "▁" back into a
      space: a "▁" typed in the text comes back as " ".
    * llama (SPM with add_space_prefix) prepends "▁" to text that follows a special token, and
      detokenize strips only the one at the very start (tests/test_tokenizer.py's exceptions).
    * qwen2 (byte-level BPE) gives back every text exactly.
    """
    if name == "qwen2":
        return text
    if name == "llama" and parse_special and ids != plain_ids:
        return None
    return text.replace("▁", " ")


tokenizer_case = st.one_of(
    st.tuples(st.just("text"), text, st.booleans()),
    st.tuples(st.just("ids"), st.lists(st.integers(0, 1 << 18), max_size=32), st.booleans()),
)


@given(name=st.sampled_from(["demo", "qwen2", "llama"]), case=tokenizer_case)
@example(name="demo", case=("text", "<start_of_turn>user\nHi<end_of_turn>", True))
@example(name="llama", case=("text", "a▁b", False))
@example(name="qwen2", case=("text", "ab\ud83d", False))
def test_fuzz_tokenizer(tokenizers, name, case):
    tok = tokenizers[name]
    kind, value, flag = case
    if kind == "ids":  # any ids of the vocabulary: detokenize and stream never fail
        ids = [i % tok.n_vocab for i in value]
        assert isinstance(tok.detokenize(ids, remove_special=flag, unparse_special=not flag), str)
        stream = tok.stream(special=flag)
        assert isinstance("".join(stream.feed(i) for i in ids) + stream.flush(), str)
        return
    text, parse_special = value, flag
    surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    try:
        ids = tok.tokenize(text, add_special=False, parse_special=parse_special)
    except BadInputError as e:
        assert surrogate and "not valid Unicode" in str(e)
        return
    assert not surrogate
    assert all(0 <= i < tok.n_vocab for i in ids)
    out = tok.detokenize(ids, unparse_special=parse_special)
    plain = tok.tokenize(text, add_special=False) if parse_special and name == "llama" else ids
    expected = _expected_round_trip(name, text, plain, ids, parse_special)
    if expected is not None:
        assert out == expected
    if name != "llama":  # llama strips the first token's prefix space; the stream cannot know it
        stream = tok.stream(special=parse_special)
        assert "".join(stream.feed(i) for i in ids) + stream.flush() == out
    if name == "demo":  # BOS added, then removed again
        with_bos = tok.tokenize(text, parse_special=parse_special)
        assert tok.detokenize(with_bos, remove_special=True, unparse_special=parse_special) == out


# ---- the safetensors header parser (cont.): run last, in the second process ------------------------

@pytest.fixture(scope="module")
def real_safetensors() -> tuple[bytes, bytes]:
    raw = (DATA / "hf" / "llama" / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return _Quiet([raw[8:8 + n], raw[8 + n:8 + n + 4096]])  # the header, and data for a few tensors


safetensors_case = st.one_of(
    st.tuples(st.just("built"), header_json, st.one_of(st.none(), st.sampled_from(EXTREME_INTS)),
              st.binary(max_size=256)),
    st.tuples(st.just("mutated"), st.lists(mutation, min_size=1, max_size=4)),
)


@given(case=safetensors_case)
@example(case=("built", b'{"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}', None, b"\0" * 4))
@example(case=("built", b'{"t": {"dtype": "F32", "shape": [%d, %d], "data_offsets": [0, 0]}}' % (2**62, 2**62),
               None, b""))
@example(case=("built", b"[" * 100_000 + b"]" * 100_000, None, b""))
def fuzz_safetensors_header(scratch, real_safetensors, case):
    if case[0] == "built":
        _, header, length, data = case
    else:
        header, data = real_safetensors
        header, length = _mutate(header, len(header), case[1]), None
    path = _write(scratch / "fuzz.safetensors", _safetensors_file(header, data, length))
    try:
        _parse_safetensors(path)
    except LlmcliError as e:
        assert "fuzz.safetensors" in str(e) and "\n" not in str(e)


def test_fuzz_safetensors_header(fuzz_child, scratch, real_safetensors):
    fuzz_child.run_or_wait("test_fuzz_safetensors_header",
                           lambda: fuzz_safetensors_header(scratch=scratch, real_safetensors=real_safetensors))


# ---- the chat-template renderer ---------------------------------------------------------------------

CANARY = "llmcli-fuzz-canary-7f3a9c"
NAMES = ["messages", "message", "loop", "ns", "x", "v", "bos_token", "eos_token", "add_generation_prompt",
         "range", "dict", "namespace", "cycler", "joiner", "raise_exception", "strftime_now", "lipsum", "self",
         "caller", "varargs", "kwargs", "config", "request", "undefined_thing"]
ATTRS = ["__class__", "__mro__", "__subclasses__", "__globals__", "__init__", "__dict__", "__builtins__",
         "__self__", "__func__", "__code__", "__closure__", "__getattribute__", "__reduce_ex__", "mro",
         "gi_frame", "f_globals", "f_back", "tb_frame", "_TemplateReference__context", "environment",
         "_Namespace__attrs", "__wrapped__", "func_globals", "im_func", "co_consts", "format", "format_map",
         "items", "keys", "values", "get", "append", "pop", "update", "clear", "center", "ljust", "replace",
         "join", "split", "upper", "encode", "to_bytes", "expandtabs", "translate", "content", "role",
         "index", "length", "cycle", "first", "last", "revindex", "_CANARY", "globals", "filters"]
FILTERS = ["abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
           "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items",
           "join", "last", "length", "list", "lower", "map", "max", "min", "pprint", "random", "reject",
           "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "slice", "sort",
           "string", "striptags", "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode",
           "urlize", "wordcount", "wordwrap", "xmlattr"]
BIG_INTS = ["0", "1", "2", "-1", "7", "100", "100000", "1000000", "10**6", "10**9", "10**18", "2**64", "99999999"]
STRINGS = ["''", "'x'", "'ab'", "'%s'", "'%0999999d'", "'%*d'", "'{:>99999999}'", "'{}'", "'\\t'", "'\\n'",
           "'__class__'", "'content'", "'role'", "'x' * 1000", "'" + CANARY[:6] + "'"]


ATOMS = NAMES + BIG_INTS + STRINGS + ["[1, 2, 3]", "{'a': 1}", "none", "true", "x.y", "messages[0]", "loop.index"]
# Everything that can follow an expression, written out: one draw picks one (cheap to generate).
SUFFIXES = ([f".{a}" for a in ATTRS] + [f"[{a}]" for a in ATOMS] + ["()", "(1)", "(x)", "(*[1, 2])", "(**{})"]
            + [f"|{f}" for f in FILTERS] + [f"|{f}({a})" for f in FILTERS for a in ("1", "10**9", "'x'", "x", "none")]
            + [f" {op} {a}" for op in ("+", "-", "*", "/", "//", "%", "**", "~", "and", "or", "==", "in", "not in")
               for a in ATOMS]
            + [f" is {t}" for t in ("defined", "string", "mapping", "number", "iterable", "none", "sameas(x)")])
expression = st.tuples(st.sampled_from(ATOMS), st.lists(st.sampled_from(SUFFIXES), max_size=2)).map(
    lambda t: "(" + t[0] + "".join(t[1]) + ")")
LEAVES = ["{{{{ {e} }}}}", "{{% set x = {e} %}}", "{{% set ns.a = {e} %}}", "{{% if {e} %}}y{{% endif %}}", "text\n",
          "{{% break %}}", "{{% continue %}}", "{{{{ m({e}) }}}}", "{{{{ loop({e}) }}}}", "{{% do {e} %}}", "{{% {e} %}}"]
BLOCKS = ["{{% for x in {e} %}}{b}{{% endfor %}}", "{{% for x in {e} recursive %}}{b}{{{{ loop(x) }}}}{{% endfor %}}",
          "{{% for x in {e} if x %}}{b}{{% else %}}{b}{{% endfor %}}", "{{% if {e} %}}{b}{{% elif x %}}{b}{{% endif %}}",
          "{{% macro m(n) %}}{b}{{% endmacro %}}", "{{% set v %}}{b}{{% endset %}}{{{{ v }}}}",
          "{{% filter upper %}}{b}{{% endfilter %}}", "{{% call m(1) %}}{b}{{% endcall %}}", "{{% raw %}}{b}{{% endraw %}}",
          "{{% with y = {e} %}}{b}{{% endwith %}}", "{b}{b}"]
leaf = st.tuples(st.sampled_from(LEAVES), expression).map(lambda t: t[0].format(e=t[1]))


def _block(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(BLOCKS), expression, inner).map(lambda t: t[0].format(e=t[1], b=t[2]))


statement = st.one_of(leaf, _block(leaf), _block(_block(leaf)))  # blocks nest up to two deep
template_source = st.lists(statement, min_size=1, max_size=2).map(
    lambda parts: "{% set ns = namespace(a=1) %}" + "".join(parts))


@pytest.fixture(scope="module")
def real_templates() -> list[str]:
    ref = json.loads((DATA / "chat_ref.json").read_text())
    return _Quiet(entry["template"] for entry in ref["renders"].values())


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


def _render_hostile(source: str) -> None:
    from llmcli.generation.chat import ChatTemplate
    from llmcli.generation.template_sandbox import measure

    note(source)
    started = time.thread_time()  # CPU time: a busy machine must not fail the case
    try:
        template = ChatTemplate(source, "<bos>", "<eos>", max_seconds=0.05, max_chars=1 << 16)
        out = template.render(CONVERSATION)
    except LlmcliError as e:
        assert CANARY not in str(e)
        assert "\n" not in str(e)
        out = ""
    cpu = time.thread_time() - started
    assert CANARY not in out, "the template reached Python internals"
    assert len(out) <= (1 << 16) + 2 * measure((CONVERSATION, "<bos>", "<eos>"))[0]
    assert cpu < 5, f"{cpu:.2f} s of CPU for a template limited to 0.05 s"  # compile time included


@pytest.fixture(scope="module")
def canary():
    """A secret in the chat module's globals: a template that reaches them could print it."""
    import llmcli.generation.chat as chat

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chat, "_CANARY", CANARY, raising=False)
        yield CANARY


chat_case = st.one_of(
    st.tuples(st.just("built"), template_source),
    st.tuples(st.just("mutated"), st.integers(0, 5),
              st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 8),
                                 st.text(alphabet="{}%#()[]|.~'\"ab -+*", max_size=6)), min_size=1, max_size=3)),
)


@given(case=chat_case)
@example(case=("built", "{{ raise_exception.__globals__['_CANARY'] }}"))
@example(case=("built", "{{ cycler.__init__.__globals__.os }}"))
@example(case=("built", "{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}"))
@example(case=("built", "{{ ('x' * 60000) * 60000 }}"))
def fuzz_chat_templates(canary, real_templates, case):
    if case[0] == "built":
        source = case[1]
    else:
        source = real_templates[case[1] % len(real_templates)]
        for pos, cut, insert in case[2]:
            pos %= len(source) + 1
            source = source[:pos] + insert + source[pos + cut:]
    _render_hostile(source)


def test_fuzz_chat_templates_stay_sandboxed(fuzz_child, canary, real_templates):
    fuzz_child.run_or_wait("test_fuzz_chat_templates_stay_sandboxed",
                           lambda: fuzz_chat_templates(canary=canary, real_templates=real_templates))
