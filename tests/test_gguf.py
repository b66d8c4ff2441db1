"""GGUF reader and writer: round trips, every value type, and every malformed-file error."""

from __future__ import annotations

import hashlib
import json
import re
import struct

import numpy as np
import pytest

from llmcli.errors import FormatError, LlmcliError, OutputExistsError
from llmcli.gguf import GGMLType, GGUFReader, GGUFWriter, MetadataValue, ValueType, rewrite
from llmcli.gguf.constants import TYPE_INFO

SMALL = ["qwen2-f16.gguf", "llama-f16.gguf"]


@pytest.mark.parametrize("name", SMALL)
def test_round_trip_is_byte_identical(data_dir, tmp_path, name):
    src = data_dir / "gguf_ref" / name
    with GGUFReader(src) as r:
        rewrite(r, tmp_path / name)
    assert (tmp_path / name).read_bytes() == src.read_bytes()


@pytest.mark.parametrize("name", SMALL)
def test_reader_matches_recorded_tensors(data_dir, name):
    record = json.loads((data_dir / "gguf_ref" / name.replace(".gguf", ".json")).read_text())
    with GGUFReader(data_dir / "gguf_ref" / name) as r:
        assert [t.name for t in r.tensors] == record["tensor_order"]
        for t in r.tensors:
            rec = record["tensors"][t.name]
            assert t.type.name == rec["type"] and list(t.shape) == rec["shape"]
            view = r.tensor_bytes(t)
            assert view.shape == (t.n_rows, t.row_bytes)
            assert not view.flags.owndata  # a view into the mmap, not a copy
            assert hashlib.sha256(view.tobytes()).hexdigest() == rec["sha256"]
        assert r.get("general.architecture") == record["metadata"]["general.architecture"]["value"]


def test_type_table_covers_every_ggml_type():
    assert set(TYPE_INFO) == set(GGMLType)
    assert TYPE_INFO[GGMLType.Q4_K].block_bytes == 144 and TYPE_INFO[GGMLType.Q4_K].block_size == 256
    assert TYPE_INFO[GGMLType.Q8_0].block_bytes == 34
    assert TYPE_INFO[GGMLType.Q6_K].block_bytes == 210
    assert TYPE_INFO[GGMLType.IQ4_XS].block_bytes == 136


def _write_all_types(path):
    w = GGUFWriter(path)
    w.add_scalar("t.u8", 200, ValueType.UINT8)
    w.add_scalar("t.i8", -5, ValueType.INT8)
    w.add_scalar("t.u16", 60000, ValueType.UINT16)
    w.add_scalar("t.i16", -30000, ValueType.INT16)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo 🙂")
    w.add_uint64("t.u64", 2**63)
    w.add_scalar("t.i64", -(2**62), ValueType.INT64)
    w.add_scalar("t.f64", 1e-300, ValueType.FLOAT64)
    w.add_array("t.arr_f32", [1.0, 2.5], ValueType.FLOAT32)
    w.add_array("t.arr_str", ["a", "", "ü"], ValueType.STRING)
    inner = [MetadataValue(ValueType.ARRAY, np.array([1, 2], np.int32), ValueType.INT32),
             MetadataValue(ValueType.ARRAY, ["x"], ValueType.STRING)]
    w.add("t.nested", MetadataValue(ValueType.ARRAY, inner, ValueType.ARRAY))
    w.add_tensor_info("a", (32, 2), GGMLType.F32)
    w.add_tensor_info("b", (64,), GGMLType.Q8_0)
    a = np.arange(64, dtype=np.float32)
    b = np.zeros(68, dtype=np.uint8)
    with w.open():
        w.write_tensor_data("a", a)
        w.write_tensor_data("b", b)
    return a


def test_all_value_types_and_nested_arrays(tmp_path):
    path = tmp_path / "all.gguf"
    a = _write_all_types(path)
    with GGUFReader(path) as r:
        assert r.get("t.u8") == 200 and r.get("t.i8") == -5 and r.get("t.u16") == 60000
        assert r.get("t.i16") == -30000 and r.get("t.u32") == 4_000_000_000
        assert r.get("t.i32") == -2_000_000_000 and r.get("t.f32") == 0.5 and r.get("t.bool") is True
        assert r.get("t.str") == "héllo 🙂" and r.get("t.u64") == 2**63 and r.get("t.i64") == -(2**62)
        assert r.get("t.f64") == 1e-300 and r.get("t.arr_f32") == [1.0, 2.5]
        assert r.get("t.arr_str") == ["a", "", "ü"]
        assert r.get("t.nested") == [[1, 2], ["x"]]
        assert {k: v.type for k, v in r.metadata.items()}["t.u64"] == ValueType.UINT64
        np.testing.assert_array_equal(r.tensor_array("a"), a.reshape(2, 32))
        assert r.tensor("b").offset % 32 == 0 and r.tensor_bytes("b").shape == (1, 68)
        rewrite(r, tmp_path / "again.gguf")
    assert (tmp_path / "again.gguf").read_bytes() == path.read_bytes()


def test_writer_never_overwrites_without_force(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="--force"):
        GGUFWriter(path)
    assert path.read_bytes() == b"keep"


def test_writer_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "x.gguf"
    w = GGUFWriter(path)
    w.add_tensor_info("a", (32,), GGMLType.F32)
    with pytest.raises(KeyboardInterrupt):
        with w.open():
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    w2 = GGUFWriter(path)
    w2.add_tensor_info("a", (32,), GGMLType.F32)
    with pytest.raises(Exception, match="missing"):
        with w2.open():
            pass
    assert list(tmp_path.iterdir()) == []


def test_tensor_data_in_parts(tmp_path):
    """write_tensor_parts: the parts of a tensor one after the other, exactly its size or an error
    naming the tensor (and nothing left behind)."""
    values = np.arange(96, dtype=np.float32)
    whole, parts = tmp_path / "whole.gguf", tmp_path / "parts.gguf"
    for path, write in ((whole, lambda w: w.write_tensor_data("a", values)),
                        (parts, lambda w: w.write_tensor_parts("a", (values[:10], values[10:64].tobytes(), values[64:])))):
        w = GGUFWriter(path)
        w.add_tensor_info("a", (96,), GGMLType.F32)
        with w.open():
            write(w)
    assert parts.read_bytes() == whole.read_bytes()
    for bad, says in (((values[:50],), "has 200 bytes"), ((values, values[:1]), "has more than 384 bytes")):
        w = GGUFWriter(tmp_path / "bad.gguf")
        w.add_tensor_info("a", (96,), GGMLType.F32)
        with pytest.raises(LlmcliError, match=f"tensor 'a' {says}, its F32 shape"):
            with w.open():
                w.write_tensor_parts("a", bad)
        assert not (tmp_path / "bad.gguf").exists()


# -- malformed files: each must give a FormatError naming the file ----------------------------------

def _header(version=3, n_tensors=0, n_kv=0, magic=b"GGUF"):
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def _tensor(name: str, shape, type_id: int, offset: int) -> bytes:
    n = name.encode()
    return (struct.pack("<Q", len(n)) + n + struct.pack("<I", len(shape))
            + struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", type_id, offset))


def _pad32(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 32)


U32 = 4
CASES = {
    "bad magic": (_header(magic=b"GGML") + b"\0" * 16, "not a GGUF file"),
    "version 1": (_header(version=1) + b"\0" * 16, "unsupported GGUF version 1"),
    "version 99": (_header(version=99) + b"\0" * 16, "unsupported GGUF version 99"),
    "truncated kv": (_header(n_kv=1) + _kv("a", U32, b"\1\0")[:-1], "truncated"),
    "absurd kv count": (_header(n_kv=2**60) + b"\0" * 16, "impossible"),
    "absurd tensor count": (_header(n_tensors=2**60) + b"\0" * 16, "impossible"),
    "absurd string": (_header(n_kv=1) + struct.pack("<Q", 2**62) + b"\0" * 16, "string length"),
    "absurd array": (_header(n_kv=1) + _kv("a", 9, struct.pack("<IQ", U32, 2**61)), "cannot fit"),
    "duplicate key": (_header(n_kv=2) + _kv("a", U32, b"\1\0\0\0") * 2, "duplicate metadata key 'a'"),
    "unknown value type": (_header(n_kv=1) + _kv("a", 77, b"\0" * 8), "unknown metadata value type 77"),
    "duplicate tensor": (_pad32(_header(n_tensors=2) + _tensor("w", [32], 0, 0) + _tensor("w", [32], 0, 128))
                         + b"\0" * 256, "duplicate tensor name 'w'"),
    "unknown type id": (_pad32(_header(n_tensors=1) + _tensor("w", [32], 4, 0)) + b"\0" * 128,
                        "unknown ggml type id 4"),
    "misaligned offset": (_pad32(_header(n_tensors=1) + _tensor("w", [32], 0, 8)) + b"\0" * 256,
                          "not a multiple of the alignment"),
    "data past end": (_pad32(_header(n_tensors=1) + _tensor("w", [32], 0, 0)) + b"\0" * 64,
                      "runs past the end"),
    "offset outside": (_pad32(_header(n_tensors=1) + _tensor("w", [32], 0, 2**40)) + b"\0" * 128,
                       "runs past the end"),
    "too many dims": (_pad32(_header(n_tensors=1) + _tensor("w", [32, 1, 1, 1, 1], 0, 0)) + b"\0" * 128,
                      "5 dimensions"),
    "bad block multiple": (_pad32(_header(n_tensors=1) + _tensor("w", [33], 8, 0)) + b"\0" * 128,
                           "not a multiple"),
    "bad alignment": (_header(n_kv=1) + _kv("general.alignment", U32, struct.pack("<I", 48)),
                      "not a power of two"),
    "tiny file": (b"GGUF", "not a GGUF file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_files_give_clear_errors(tmp_path, case):
    blob, message = CASES[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(FormatError) as info:
        GGUFReader(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text, text


def test_truncated_real_file(data_dir, tmp_path):
    blob = (data_dir / "gguf_ref" / "qwen2-f16.gguf").read_bytes()
    for cut in (10, 200, len(blob) // 3, len(blob) - 100):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(blob[:cut])
        with pytest.raises(FormatError, match="truncated|past the end|not a GGUF"):
            GGUFReader(path)


@pytest.mark.parametrize("count", [5000, 20000])  # below and above GGUFReader.COMPILED_SCAN_MIN
@pytest.mark.parametrize("with_nul", [False, True])
def test_long_string_arrays_decode_like_one_by_one(tmp_path, with_nul, count):
    """Vocabularies are decoded in bulk; it must equal decoding each string, invalid UTF-8 included."""
    rng = np.random.default_rng(0)
    raw = [bytes(rng.integers(1, 256, rng.integers(0, 12)).astype(np.uint8)) for _ in range(count)]
    raw[7] = "é".encode()[:1]  # a truncated sequence right before the next length field
    raw[8] = "é".encode()[1:]  # a string starting with a continuation byte
    raw[9] = b""
    if with_nul:
        raw[100] = b"a\0b"
    strings = [b.decode("utf-8", errors="surrogateescape") for b in raw]
    path = tmp_path / "vocab.gguf"
    w = GGUFWriter(path)
    w.add_array("tokens", strings, ValueType.STRING)
    with w.open():
        pass
    with GGUFReader(path) as r:
        assert r.get_array("tokens") == strings
        rewrite(r, tmp_path / "again.gguf")
    assert (tmp_path / "again.gguf").read_bytes() == path.read_bytes()


def _long_vocab_blob(count: int = 20000) -> tuple[bytes, int]:
    """A GGUF header whose one key is a `count`-string array, and the offset of string 15000."""
    items = [struct.pack("<Q", 3) + b"abc"] * count
    head = _header(n_kv=1) + struct.pack("<Q", 6) + b"tokens" + struct.pack("<IIQ", 9, 8, count)
    return head + b"".join(items), len(head) + 11 * 15000


def test_long_string_array_errors(tmp_path):
    """The compiled scan of long arrays checks every length as the Python one does."""
    blob, at = _long_vocab_blob()
    path = tmp_path / "absurd.gguf"
    path.write_bytes(blob[:at] + struct.pack("<Q", 2**62) + blob[at + 8:])
    with pytest.raises(FormatError, match=f"^{re.escape(str(path))}: .*string length 4611686018427387904 exceeds"):
        GGUFReader(path)
    path = tmp_path / "cut.gguf"
    path.write_bytes(blob[:at + 4])
    with pytest.raises(FormatError, match="truncated header"):
        GGUFReader(path)
    path = tmp_path / "fine.gguf"
    path.write_bytes(blob + b"\0" * 64)
    with GGUFReader(path) as r:
        assert r.get_array("tokens") == ["abc"] * 20000


def test_tensor_copy_equals_the_mapped_bytes(data_dir, monkeypatch):
    """Copies in small chunks, releasing the mapped pages behind it; the map still reads the same
    bytes afterwards (released pages come back from the file), neighbours included."""
    monkeypatch.setattr(GGUFReader, "COPY_CHUNK_BYTES", 4096 + 7)
    path = data_dir / "gguf_ref" / "qwen2-f16.gguf"
    with GGUFReader(path) as r:
        before = {t.name: r.tensor_bytes(t).copy() for t in r.tensors}
        for t in r.tensors:
            copy = r.tensor_copy(t)
            assert copy.shape == before[t.name].shape and copy.flags.c_contiguous and copy.flags.writeable
            np.testing.assert_array_equal(copy, before[t.name])
            assert not np.shares_memory(copy, r.tensor_bytes(t))
        for t in r.tensors:
            np.testing.assert_array_equal(r.tensor_bytes(t), before[t.name])
