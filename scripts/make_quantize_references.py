"""Make tests/data/quantize_ref/: what llama-quantize (llama.cpp 0c1e570) does beyond the dense kq model.

Run with the reference venv, which has llama-cpp-python 0.3.36 (the same llama.cpp commit) and gguf-py:

    /work/refvenv/bin/python scripts/make_quantize_references.py [--reference /work/shared/reference]

It writes:

* `files.json`: the reference pack's tiny mixtral (MoE, 4 experts), qwen2 (tied embeddings) and
  gemma3 (tied, 64-wide rows so every K-quant falls back) f16 conversions - which `llmcli convert`
  reproduces byte for byte from tests/data/hf, so the tests make them instead of storing them -
  quantized by `llama_model_quantize` (2 threads) to every type llmcli supports, plus runs with
  options (--tensor-type, --output-tensor-type, --token-embedding-type, --leave-output-tensor,
  --pure, --allow-requantize). Per model: the input's sha256 and the output's tensors in file order
  (name, shape); per run: file sha256, size, and the tensor types in that order.
* `plans.json`: header-only synthetic models that exercise rules no small real model reaches - a
  "70B" Llama (80 layers, GQA 8), an 8-expert MoE, Falcon (fused attn_qkv), and a tied model whose
  rows are not a multiple of 32 (F16 fallback) - with llama-quantize's per-tensor type choice for
  every file type it offers, read from its --dry-run log. The synthetic files themselves are made
  in a temporary directory (their data is zeros) and not kept; the JSON keeps their metadata and
  tensor list, which is all a type plan needs.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "quantize_ref"

SUPPORTED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
             "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "F16", "BF16", "F32"]
# llama-quantize's QUANT_OPTIONS (name -> llama_ftype), aliases left out: they are the same numbers.
FTYPES = {
    "Q1_0": 40, "Q2_0": 41, "Q4_0": 2, "Q4_1": 3, "MXFP4_MOE": 38, "Q5_0": 8, "Q5_1": 9, "IQ2_XXS": 19,
    "IQ2_XS": 20, "IQ2_S": 28, "IQ2_M": 29, "IQ1_S": 24, "IQ1_M": 31, "TQ1_0": 36, "TQ2_0": 37,
    "Q2_K": 10, "Q2_K_S": 21, "IQ3_XXS": 23, "IQ3_S": 26, "IQ3_M": 27, "IQ3_XS": 22, "Q3_K_S": 11,
    "Q3_K_M": 12, "Q3_K_L": 13, "IQ4_NL": 25, "IQ4_XS": 30, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
    "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7, "F16": 1, "BF16": 32, "F32": 0,
}

# ---------------------------------------------------------------------------------------------
# llama.cpp's log, captured (the dry run reports each tensor's type there)
# ---------------------------------------------------------------------------------------------

_LOG: list[str] = []


@llama_cpp.llama_log_callback
def _capture(level, text, user_data):
    _LOG.append(text.decode("utf-8", "replace") if text else "")


llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))

_TENSOR_LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[([^\]]*)\], type =\s*(\S+), size =[^\n(]*(?:\((\S+)\))?")


def ggml_type_id(name: str) -> int:
    return int(gguf.GGMLQuantizationType[name.upper()])


def quantize(src: Path, dst: Path, ftype: int, *, pure=False, dry_run=False, output_tensor_type=None,
             token_embedding_type=None, leave_output_tensor=False, allow_requantize=False,
             tensor_types=()) -> tuple[int, str]:
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = ftype
    params.pure = pure
    params.dry_run = dry_run
    params.allow_requantize = allow_requantize
    params.quantize_output_tensor = not leave_output_tensor
    if output_tensor_type:  # otherwise the default, GGML_TYPE_COUNT, means "no choice"
        params.output_tensor_type = ggml_type_id(output_tensor_type)
    if token_embedding_type:
        params.token_embedding_type = ggml_type_id(token_embedding_type)
    keep = None
    if tensor_types:
        # llama-quantize lowercases the pattern; the list ends with a null pattern
        keep = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, type_name) in enumerate(tensor_types):
            keep[i].pattern = pattern.lower().encode()
            keep[i].type = ggml_type_id(type_name)
        keep[len(tensor_types)].pattern = None
        params.tt_overrides = ctypes.cast(keep, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    _LOG.clear()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    return rc, "".join(_LOG)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe_file(path: Path) -> tuple[dict, list]:
    """(run facts, [[name, shape], ...] in file order)."""
    r = gguf.GGUFReader(path)
    layout = [[t.name, [int(d) for d in t.shape]] for t in r.tensors]
    types = " ".join(t.tensor_type.name for t in r.tensors)
    return {"file_sha256": sha256_file(path), "file_bytes": path.stat().st_size, "types": types}, layout


# ---------------------------------------------------------------------------------------------
# Real tiny models: quantized files
# ---------------------------------------------------------------------------------------------

REAL_MODELS = ["mixtral", "qwen2", "gemma3"]

OPTION_RUNS = [
    # (model, type, options)
    ("kq", "Q4_K_M", {"tensor_types": [["attn_v", "Q8_0"], [r"blk\.0\.ffn_.*", "Q5_0"]]}),
    ("kq", "Q3_K_M", {"output_tensor_type": "Q8_0", "token_embedding_type": "F16"}),
    ("kq", "Q4_K_S", {"leave_output_tensor": True}),
    ("kq", "Q5_K_S", {"tensor_types": [["FFN_DOWN", "q6_k"]], "pure": True}),
    ("qwen2", "Q4_K_M", {"output_tensor_type": "Q4_0"}),
    ("qwen2", "Q8_0", {"token_embedding_type": "Q4_1"}),
    ("gemma3", "Q4_K_M", {"token_embedding_type": "Q8_0", "tensor_types": [["attn_q", "Q4_K"]]}),
    ("mixtral", "Q3_K_L", {"tensor_types": [["ffn_gate_inp", "Q8_0"], ["exps", "Q4_0"]]}),
    ("mixtral", "F16", {"output_tensor_type": "Q8_0"}),
]


def make_files(reference: Path, tmp: Path) -> dict:
    inputs = {m: reference / "gguf" / f"{m}-f16.gguf" for m in REAL_MODELS}
    inputs["kq"] = reference / "kq" / "kq-f16.gguf"
    models = {m: {"input_sha256": sha256_file(p), "layout": None} for m, p in inputs.items()}
    runs = []

    def run(model, type_name, options, src=None, input_name=None):
        dst = tmp / "out.gguf"
        dst.unlink(missing_ok=True)
        rc, log = quantize(src or inputs[model], dst, FTYPES[type_name], **options)
        entry = {"model": model, "type": type_name, "options": options}
        if input_name:
            entry["input"] = input_name
        if rc != 0:
            entry["failed"] = True
            entry["error"] = [line.strip() for line in log.splitlines() if "failed to quantize" in line]
        else:
            facts, layout = describe_file(dst)
            entry.update(facts)
            if models[model]["layout"] is None:
                models[model]["layout"] = layout
            assert layout == models[model]["layout"], (model, type_name)
        print(model, type_name, options or "", "FAILED" if rc else entry["file_sha256"][:12], file=sys.stderr)
        runs.append(entry)

    for model in REAL_MODELS:
        for type_name in SUPPORTED:
            run(model, type_name, {})
    for model, type_name, options in OPTION_RUNS:
        run(model, type_name, options)
    # requantizing llama-quantize's own Q4_K_M kq file (the test makes it, byte-identical, from
    # kq-f16.gguf): with the flag, and the refusal without it
    q4km = reference / "kq" / "kq-Q4_K_M.gguf"
    run("kq", "Q4_0", {"allow_requantize": True}, src=q4km, input_name="kq-Q4_K_M")
    run("kq", "Q4_0", {}, src=q4km, input_name="kq-Q4_K_M")
    return {"tool": "llama_cpp.llama_model_quantize, llama-cpp-python 0.3.36 (llama.cpp 0c1e570), nthread 2",
            "models": models, "runs": runs}


# ---------------------------------------------------------------------------------------------
# Synthetic header-only models: type plans from the dry run
# ---------------------------------------------------------------------------------------------


def _layers(n_layer, per_layer):
    return [(f"blk.{i}.{name}", shape, dtype) for i in range(n_layer) for name, shape, dtype in per_layer]


def synthetic_models() -> dict:
    f16, f32 = "F16", "F32"
    dense = [("attn_norm.weight", [256], f32), ("attn_q.weight", [256, 16], f16),
             ("attn_k.weight", [256, 16], f16), ("attn_v.weight", [256, 16], f16),
             ("attn_output.weight", [256, 16], f16), ("ffn_norm.weight", [256], f32),
             ("ffn_gate.weight", [256, 16], f16), ("ffn_up.weight", [256, 16], f16),
             ("ffn_down.weight", [512, 16], f16)]
    moe = [t for t in dense if not t[0].startswith("ffn_") or t[0] == "ffn_norm.weight"] + [
        ("ffn_gate_inp.weight", [256, 8], f32), ("ffn_gate_exps.weight", [256, 16, 8], f16),
        ("ffn_up_exps.weight", [256, 16, 8], f16), ("ffn_down_exps.weight", [512, 16, 8], f16)]
    falcon = [("attn_norm.weight", [256], f32), ("attn_norm.bias", [256], f32),
              ("attn_qkv.weight", [256, 48], f16), ("attn_output.weight", [256, 16], f16),
              ("ffn_up.weight", [256, 16], f16), ("ffn_down.weight", [1024, 16], f16)]
    odd = [("attn_norm.weight", [80], f32), ("attn_q.weight", [80, 80], f16), ("attn_q.bias", [80], f32),
           ("attn_k.weight", [80, 16], f16), ("attn_v.weight", [80, 16], f16),
           ("attn_output.weight", [80, 80], f16), ("ffn_norm.weight", [80], f32),
           ("ffn_gate.weight", [80, 96], f16), ("ffn_up.weight", [80, 96], f16),
           ("ffn_down.weight", [96, 80], f16), ("ffn_dummy.weight", [80, 1], f16)]

    def common(arch, n_layer, n_embd, n_head, n_head_kv, extra=None):
        kv = {"general.architecture": ["STRING", arch], f"{arch}.block_count": ["UINT32", n_layer],
              f"{arch}.context_length": ["UINT32", 256], f"{arch}.embedding_length": ["UINT32", n_embd],
              f"{arch}.feed_forward_length": ["UINT32", 64], f"{arch}.attention.head_count": ["UINT32", n_head],
              f"{arch}.attention.head_count_kv": ["UINT32", n_head_kv],
              f"{arch}.attention.layer_norm_rms_epsilon": ["FLOAT32", 1e-5],
              f"{arch}.attention.layer_norm_epsilon": ["FLOAT32", 1e-5]}
        kv.update(extra or {})
        return kv

    head = [("token_embd.weight", [256, 64], "F16"), ("output_norm.weight", [256], "F32"),
            ("output.weight", [256, 64], "F16")]
    return {
        "llama_70b": {"metadata": common("llama", 80, 256, 64, 8), "tensors": head + _layers(80, dense)},
        "moe_8_experts": {"metadata": common("llama", 8, 256, 8, 8, {"llama.expert_count": ["UINT32", 8],
                                                                   "llama.expert_used_count": ["UINT32", 2]}),
                          "tensors": head + _layers(8, moe)},
        "falcon": {"metadata": common("falcon", 8, 256, 8, 1),
                   "tensors": [t for t in head if t[0] != "output_norm.weight"] +
                   [("output_norm.weight", [256], "F32"), ("output_norm.bias", [256], "F32")] + _layers(8, falcon)},
        "qwen2_tied_80": {"metadata": common("qwen2", 4, 80, 5, 1),
                          "tensors": [("token_embd.weight", [80, 64], "F16"), ("output_norm.weight", [80], "F32")]
                          + _layers(4, odd)},
    }


def write_synthetic(path: Path, model: dict) -> None:
    w = gguf.GGUFWriter(path, arch=None)
    for key, (vtype, value) in model["metadata"].items():
        w.add_key_value(key, value, gguf.GGUFValueType[vtype])
    for name, shape, dtype in model["tensors"]:
        np_dtype = np.float16 if dtype == "F16" else np.float32
        w.add_tensor(name, np.zeros(list(reversed(shape)), dtype=np_dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def parse_dry_run(log: str) -> dict[str, str]:
    types = {}
    for m in _TENSOR_LINE.finditer(log):
        name, _shape, cur, new = m.groups()
        types[name] = (new or cur).upper()
    return types


PURE_TOO = ("falcon", "qwen2_tied_80")


def make_plans(tmp: Path) -> dict:
    out = {}
    for model_name, model in synthetic_models().items():
        src = tmp / f"{model_name}.gguf"
        write_synthetic(src, model)
        plans = {}
        for type_name, ftype in FTYPES.items():
            # --pure only differs from "every tensor the base type" through row-length fallbacks
            for pure in (False, True) if model_name in PURE_TOO else (False,):
                rc, log = quantize(src, tmp / "never.gguf", ftype, pure=pure, dry_run=True)
                key = type_name + ("-pure" if pure else "")
                if rc != 0:
                    plans[key] = {"failed": True, "log_tail": log.strip().splitlines()[-3:]}
                else:
                    types = parse_dry_run(log)
                    assert len(types) == len(model["tensors"]), (model_name, key, len(types))
                    order = list(types)  # the log lists tensors in llama-quantize's order
                    if "order" not in model:
                        model["order"] = order
                    assert order == model["order"]
                    plans[key] = {"ftype": ftype, "types": " ".join(types.values()),
                                  "requires_imatrix": "will require an imatrix" in log}
                print(model_name, key, "FAILED" if rc else "", file=sys.stderr)
        out[model_name] = {"metadata": model["metadata"],
                           "tensors": [[n, s, d] for n, s, d in model["tensors"]],
                           "order": model.get("order"), "plans": plans}
    return {"tool": "llama_cpp.llama_model_quantize with dry_run (llama.cpp 0c1e570); "
                    "types parsed from its per-tensor log lines", "models": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", type=Path, default=Path("/work/shared/reference"))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plans = make_plans(tmp)
        (OUT / "plans.json").write_text(json.dumps(plans, indent=1) + "\n")
        files = make_files(args.reference, tmp)
        (OUT / "files.json").write_text(json.dumps(files, indent=1) + "\n")


if __name__ == "__main__":
    main()
