"""Bad input to the engine: one-line errors that name the file and what is wrong, exit code 1.

Broken models are made from the stored tiny llama GGUF (llama.cpp's llama-f16.gguf) by rewriting
one thing: the architecture name, one tensor's type, a missing tensor, or a truncated file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmcli.errors import BadInputError, FormatError, UnsupportedError
from llmcli.gguf import GGUFReader, GGUFWriter
from llmcli.gguf.constants import TYPE_INFO, GGMLType, ValueType
from llmcli.gguf.reader import MetadataValue
from llmcli.models import load_model, supported_architectures

TINY = Path(__file__).parent / "data" / "gguf_ref" / "llama-f16.gguf"


def rewrite(dst: Path, arch: str | None = None, retype: dict[str, GGMLType] | None = None,
            drop: tuple[str, ...] = ()) -> Path:
    """A copy of TINY with another architecture name, some tensors' types changed (zero data of
    the right size) or some tensors left out."""
    retype = retype or {}
    with GGUFReader(TINY) as reader:
        w = GGUFWriter(dst)
        for key, mv in reader.metadata.items():
            if arch is not None and (key == "general.architecture" or key.startswith("llama.")):
                key = key.replace("llama.", f"{arch}.", 1)
                mv = MetadataValue(ValueType.STRING, arch) if key == "general.architecture" else mv
            w.add(key, mv)
        kept = [t for t in reader.tensors if t.name not in drop]
        for t in kept:
            w.add_tensor_info(t.name, t.shape, retype.get(t.name, t.type))
        with w.open():
            for t in kept:
                if t.name in retype:
                    data = np.zeros(t.n_rows * TYPE_INFO[retype[t.name]].row_bytes(t.row_length), np.uint8)
                else:
                    data = reader.tensor_bytes(t)
                w.write_tensor_data(t.name, data)
    return dst


def _one_line_error(cli, model: Path, *fragments: str, args=("-p", "hello", "--temp", "0", "-n", "2")):
    res = cli("run", "-m", model, *args)
    assert res.exit_code == 1, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    for fragment in fragments:
        assert fragment in res.stderr, res.stderr


def test_not_a_gguf(cli, tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("these are not the weights you are looking for\n" * 4)
    _one_line_error(cli, path, "notes.gguf", "not a GGUF file")
    with pytest.raises(FormatError):
        load_model(path)


def test_truncated_gguf(cli, tmp_path):
    path = tmp_path / "half.gguf"
    data = TINY.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _one_line_error(cli, path, "half.gguf", "truncated")


def test_unsupported_architecture_is_named_with_the_supported_ones(cli, tmp_path):
    path = rewrite(tmp_path / "bloom.gguf", arch="bloom")
    _one_line_error(cli, path, "bloom.gguf", "architecture 'bloom' is not supported", "llama", "gemma3", "qwen2moe")
    assert {"llama", "baichuan", "qwen2", "qwen2moe", "qwen3", "gemma", "gemma2", "gemma3",
            "phi3"} <= set(supported_architectures())


def test_tensor_type_the_engine_cannot_compute(cli, tmp_path):
    path = rewrite(tmp_path / "q8_1.gguf", retype={"blk.1.attn_q.weight": GGMLType.Q8_1})
    _one_line_error(cli, path, "q8_1.gguf", "'blk.1.attn_q.weight'", "Q8_1")
    with pytest.raises(UnsupportedError):
        load_model(path)


def test_embedding_type_the_engine_cannot_read(tmp_path):
    path = rewrite(tmp_path / "mxfp4.gguf", retype={"token_embd.weight": GGMLType.MXFP4})
    with pytest.raises(UnsupportedError, match=r"token_embd\.weight.*MXFP4"):
        load_model(path)


def test_missing_tensor(cli, tmp_path):
    path = rewrite(tmp_path / "holey.gguf", drop=("blk.1.ffn_norm.weight",))
    _one_line_error(cli, path, "holey.gguf", "missing tensor 'blk.1.ffn_norm.weight'")


def test_prompt_longer_than_the_context(cli):
    _one_line_error(cli, TINY, "--ctx-size",
                    args=("-p", "The quick brown fox jumps over the lazy dog", "--ctx-size", "8", "--temp", "0"))
    model = load_model(TINY, ctx_size=8)
    seq = model.new_sequence()
    with pytest.raises(BadInputError, match="do not fit the context of 8 tokens"):
        model.forward(seq, list(range(1, 10)))
    model.forward(seq, list(range(1, 6)))
    with pytest.raises(BadInputError, match="at position 5"):
        model.forward(seq, [1, 2, 3, 4])


def test_token_id_outside_the_vocabulary():
    model = load_model(TINY)
    with pytest.raises(BadInputError, match="token id 1000 is outside the vocabulary of 1000"):
        model.forward(model.new_sequence(), [1, 1000])


def test_moe_layer_without_expert_tensors(tmp_path):
    """A router without its experts (e.g. an old per-expert layout llama.cpp no longer reads)."""
    from llmcli.convert.pipeline import convert

    mixtral = convert(Path(__file__).parent / "data" / "hf" / "mixtral", tmp_path / "mixtral.gguf", outtype="f16")
    src = Path(mixtral.output)
    with GGUFReader(src) as reader:
        w = GGUFWriter(tmp_path / "no_experts.gguf")
        for key, mv in reader.metadata.items():
            w.add(key, mv)
        kept = [t for t in reader.tensors if t.name != "blk.0.ffn_up_exps.weight"]
        for t in kept:
            w.add_tensor_info(t.name, t.shape, t.type)
        with w.open():
            for t in kept:
                w.write_tensor_data(t.name, reader.tensor_bytes(t))
    with pytest.raises(FormatError, match=r"missing tensor 'blk\.0\.ffn_up_exps\.weight'"):
        load_model(tmp_path / "no_experts.gguf")


def test_a_name_with_a_line_break_still_gives_one_error_line(cli, tmp_path):
    """Names come from the file: a newline in one is shown escaped, the error stays one line."""
    path = rewrite(tmp_path / "newline.gguf", arch="bad\narch")
    _one_line_error(cli, path, "newline.gguf", "architecture 'bad\\narch' is not supported")
