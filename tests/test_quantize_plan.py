"""llama-quantize's per-tensor type choices, checked against what llama-quantize really did.

tests/data/kq/types/*.json record llama-quantize's output for the dense K-quant model (types, order,
file size). MoE, tied-embedding and odd-row-length models: tests/test_quantize_refs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmcli.errors import BadInputError, UnsupportedError
from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import GGMLType
from llmcli.quantize import plan_quantize
from llmcli.quants.mixes import (
    MIXES,
    ModelFacts,
    QuantizeOptions,
    find_mix,
    llama_tensor_order,
    n_dims,
    parse_tensor_type_override,
    plan_types,
)

DATA = Path(__file__).parent / "data"
KQ = DATA / "kq" / "kq-f16.gguf"
KQ_TYPES = sorted((DATA / "kq" / "types").glob("*.json"))
KQ_RECORDS = [p for p in KQ_TYPES if not json.loads(p.read_text()).get("failed")]


def test_the_records_are_there():
    assert len(KQ_RECORDS) == 19 and (DATA / "kq" / "types" / "Q2_K_S.json").exists()


@pytest.mark.parametrize("record_path", KQ_RECORDS, ids=lambda p: p.stem)
def test_kq_plan_matches_llama_quantize(record_path):
    record = json.loads(record_path.read_text())
    with GGUFReader(KQ) as reader:
        plan = plan_quantize(reader, MIXES[record["type_arg"]], QuantizeOptions(pure=record["pure"]))
        assert plan.mix.file_type == record["general.file_type"]
        # same tensors, same order (llama-quantize sorts by layer, then name), same types and shapes
        assert [t.name for t in plan.tensors] == list(record["tensors"])
        for t in plan.tensors:
            expected = record["tensors"][t.name]
            assert (t.target.name, list(t.shape), t.bytes_out) == \
                (expected["type"], expected["shape"], expected["n_bytes"]), t.name
        # header + padding + data: the file size llama-quantize wrote
        assert plan.output_file_bytes == record["file_bytes"]


def test_q2_k_s_is_refused_with_the_imatrix_explanation():
    record = json.loads((DATA / "kq" / "types" / "Q2_K_S.json").read_text())
    assert record["failed"] and "importance matrix" in " ".join(record["llama_quantize_error"])
    with pytest.raises(UnsupportedError, match="importance matrix"):
        find_mix("Q2_K_S")


def test_aliases_are_llama_quantize_s():
    assert find_mix("q4_k").file_type == find_mix("Q4_K_M").file_type
    assert find_mix("Q3_K").file_type == find_mix("Q3_K_M").file_type
    assert find_mix("Q5_K").file_type == find_mix("Q5_K_M").file_type
    assert find_mix("15").name == "Q4_K"  # llama-quantize also takes the numeric file type


def test_unknown_and_unsupported_types():
    with pytest.raises(BadInputError, match="unknown quantization type 'Q9_K'.*Q4_K_M"):
        find_mix("Q9_K")
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        find_mix("IQ2_XXS")


def test_llama_tensor_order_sorts_layers_numerically():
    names = ["blk.10.attn_q.weight", "blk.2.ffn_up.weight", "output.weight", "blk.2.attn_k.weight",
             "token_embd.weight", "output_norm.weight"]
    assert llama_tensor_order(names) == ["output.weight", "output_norm.weight", "token_embd.weight",
                                         "blk.2.attn_k.weight", "blk.2.ffn_up.weight", "blk.10.attn_q.weight"]


def test_n_dims_ignores_trailing_ones():
    assert n_dims((256, 1)) == 1 and n_dims((256, 4, 1)) == 2 and n_dims((64, 1, 8)) == 3


def _kq_tensors():
    with GGUFReader(KQ) as reader:
        return reader.get, [(t.name, t.shape, t.type) for t in reader.tensors]


def test_options_override_the_mix():
    get, tensors = _kq_tensors()
    facts = ModelFacts.from_metadata(get)
    options = QuantizeOptions(output_tensor_type=GGMLType.Q8_0, token_embedding_type=GGMLType.F16,
                              tensor_types=[parse_tensor_type_override("ATTN_V=q8_0"),
                                            parse_tensor_type_override(r"blk\.0\.ffn_.*=Q5_0")])
    chosen = {c.name: c.target for c in plan_types(facts, MIXES["Q4_K_M"], options, tensors)}
    assert chosen["output.weight"] == GGMLType.Q8_0
    assert chosen["token_embd.weight"] == GGMLType.F16
    assert all(chosen[f"blk.{i}.attn_v.weight"] == GGMLType.Q8_0 for i in range(8))
    assert chosen["blk.0.ffn_down.weight"] == chosen["blk.0.ffn_up.weight"] == GGMLType.Q5_0
    assert chosen["blk.0.attn_norm.weight"] == GGMLType.F32

    kept = {c.name: c.target for c in plan_types(facts, MIXES["Q4_0"], QuantizeOptions(leave_output_tensor=True), tensors)}
    assert kept["output.weight"] == GGMLType.F16 and kept["token_embd.weight"] == GGMLType.Q4_0


def test_bad_tensor_type_specs():
    for spec, message in [("attn_v", "REGEX=TYPE"), ("=q8_0", "missing tensor name"),
                          ("attn_v=", "missing type"), ("attn_v=q9_0", "unknown ggml type"),
                          ("attn_v(=q8_0", "bad regular expression")]:
        with pytest.raises(BadInputError, match=message):
            parse_tensor_type_override(spec)


def test_demo_model_types_are_llama_quantize_s_q4_k_m():
    """The Gemma 3 270M demo file was made by llama-quantize Q4_K_M: tied 640-wide embeddings (Q8_0),
    Q5_0/Q8_0 fallbacks for 640-wide rows. Re-planning it gives back every tensor's type and order."""
    from llmcli.demo import demo_model_path

    with GGUFReader(demo_model_path()) as reader:
        assert reader.get("general.file_type") == MIXES["Q4_K_M"].file_type
        plan = plan_quantize(reader, MIXES["Q4_K_M"], QuantizeOptions(), allow_requantize=True)
        assert [t.name for t in plan.tensors] == [t.name for t in reader.tensors]
        assert [t.target for t in plan.tensors] == [t.type for t in reader.tensors]
        assert plan.n_fallback > 0 and plan.output_file_bytes == reader.file_size
