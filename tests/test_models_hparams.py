"""Hyperparameters read from GGUF metadata: every missing or mistyped one is a one-line FormatError
naming the file and the key (never a traceback such as `int(None)`).

The broken files are the stored tiny llama GGUF (llama.cpp's llama-f16.gguf) written again by the
project's GGUFWriter with one metadata key removed or given another type or value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmcli.errors import FormatError, UnsupportedError
from llmcli.gguf import GGUFReader, GGUFWriter
from llmcli.gguf.constants import ValueType
from llmcli.gguf.reader import MetadataValue
from llmcli.models import load_model

TINY = Path(__file__).parent / "data" / "gguf_ref" / "llama-f16.gguf"
REQUIRED_KEYS = ["block_count", "embedding_length", "attention.head_count"]
_DROP = object()


def with_metadata(dst: Path, changes: dict[str, MetadataValue | object]) -> Path:
    """A copy of TINY with `llama.<key>` replaced by (or added with) a value, or removed (`_DROP`)."""
    changes = {f"llama.{k}": v for k, v in changes.items()}
    with GGUFReader(TINY) as reader:
        w = GGUFWriter(dst)
        for key, mv in reader.metadata.items():
            new = changes.get(key, mv)
            if new is not _DROP:
                w.add(key, new)
        for key, new in changes.items():
            if key not in reader.metadata and new is not _DROP:
                w.add(key, new)
        w.add_tensor_infos_from(reader.tensors)
        with w.open():
            for t, data in reader.iter_tensors():
                w.write_tensor_data(t.name, data)
    return dst


def string(text: str) -> MetadataValue:
    return MetadataValue(ValueType.STRING, text)


def u32(value: int) -> MetadataValue:
    return MetadataValue(ValueType.UINT32, value)


def load_error(path: Path, error=FormatError) -> str:
    with pytest.raises(error) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_required_key_names_file_and_key(cli, tmp_path, key):
    path = with_metadata(tmp_path / "missing.gguf", {key: _DROP})
    message = load_error(path)
    assert f"'llama.{key}' is missing" in message
    res = cli("run", "-m", path, "-p", "hi", "-n", "1", "--temp", "0")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error:")
    assert f"llama.{key}" in res.stderr and "missing.gguf" in res.stderr


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_mistyped_required_key_names_file_and_key(tmp_path, key):
    path = with_metadata(tmp_path / "mistyped.gguf", {key: string("four")})
    assert f"'llama.{key}' must be an integer, not STRING ('four')" in load_error(path)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_zero_required_key_is_refused(tmp_path, key):
    path = with_metadata(tmp_path / "zero.gguf", {key: u32(0)})
    assert f"'llama.{key}' is 0, must be at least 1" in load_error(path)


@pytest.mark.parametrize("key,value,expected", [
    ("attention.head_count_kv", string("2"), "must be an integer, not STRING"),
    ("attention.head_count_kv", u32(3), "4 attention heads are not a multiple of 3"),
    ("attention.key_length", MetadataValue(ValueType.FLOAT32, 16.0), "must be an integer, not FLOAT32"),
    ("context_length", string("512"), "must be an integer, not STRING"),
    ("feed_forward_length", MetadataValue(ValueType.ARRAY, ["128", "128"], ValueType.STRING),
     "must be an integer or an array of integers, not an array of STRING"),
    ("feed_forward_length", MetadataValue(ValueType.ARRAY, np.array([128], np.uint32), ValueType.UINT32),
     "has 1 per-layer values for 2 layers"),
    ("rope.freq_base", string("10000"), "must be a number, not STRING"),
    ("rope.freq_base", MetadataValue(ValueType.FLOAT32, float("nan")), "must be finite"),
    ("attention.layer_norm_rms_epsilon", MetadataValue(ValueType.BOOL, True), "must be a number, not BOOL"),
    ("rope.scaling.type", u32(1), "must be a string, not UINT32"),
])
def test_mistyped_optional_key_names_file_and_key(tmp_path, key, value, expected):
    message = load_error(with_metadata(tmp_path / "bad.gguf", {key: value}))
    assert f"llama.{key}" in message or "attention heads" in message
    assert expected in message


def test_per_layer_head_count_array_is_read(tmp_path):
    heads = MetadataValue(ValueType.ARRAY, np.array([4, 4], np.uint32), ValueType.UINT32)
    model = load_model(with_metadata(tmp_path / "array.gguf", {"attention.head_count": heads}))
    assert model.hp.n_head == 4
    varying = MetadataValue(ValueType.ARRAY, np.array([4, 2], np.uint32), ValueType.UINT32)
    message = load_error(with_metadata(tmp_path / "varying.gguf", {"attention.head_count": varying}),
                         UnsupportedError)
    assert "varies per layer" in message
