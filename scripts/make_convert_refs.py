#!/usr/bin/env python3
"""Make reference records for `llmcli convert --outtype q8_0|bf16` with llama.cpp's own converter.

Runs llama.cpp's `convert_hf_to_gguf.py` (the vendored copy at the reference commit, needs torch +
transformers: run it with the reference venv) on the tiny checkpoints in tests/data/hf and stores only
a JSON record of each output (file sha256, metadata, per-tensor type/shape/sha256) under
tests/data/convert_ref/. The byte-level BPE checkpoints have pre-tokenizer hashes llama.cpp does not
know; as in the reference pack, their `tokenizer.ggml.pre` is forced (llama_bf16 -> llama-bpe,
qwen2 -> qwen2) by replacing the converter's hash lookup for that run.

    /work/refvenv/bin/python scripts/make_convert_refs.py \
        --llama-cpp /work/llsrc/llama_cpp_python-0.3.36/vendor/llama.cpp
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
FORCED_PRE = {"llama_bf16": "llama-bpe", "qwen2": "qwen2"}
JOBS = [("llama", "q8_0"), ("mixtral", "q8_0"), ("gemma3", "q8_0"), ("phi3", "q8_0"),
        ("qwen2", "q8_0"), ("llama_bf16", "q8_0"), ("llama_bf16", "bf16"), ("llama", "bf16"),
        ("llama_bf16", "auto"), ("llama", "auto")]

# Config variants, converted to f16: name -> (checkpoint, {config key: new value, None = remove}).
# "*-defaults": keys removed, so transformers' config defaults apply (llama.cpp reads config.json
# through AutoConfig); the others switch on RoPE scaling variants.
_DROP_ROPE = {"rope_theta": None, "rope_parameters": None, "rope_scaling": None}
VARIANTS = {
    "llama-defaults": ("llama", {"head_dim": None, **_DROP_ROPE, "max_position_embeddings": None,
                                 "rms_norm_eps": None}),
    "mistral-defaults": ("mistral", {"head_dim": None, **_DROP_ROPE, "max_position_embeddings": None,
                                     "rms_norm_eps": None, "sliding_window": None}),
    "qwen2-defaults": ("qwen2", {**_DROP_ROPE, "max_position_embeddings": None, "rms_norm_eps": None}),
    "gemma3-defaults": ("gemma3", {**_DROP_ROPE, "rope_local_base_freq": None, "max_position_embeddings": None,
                                   "rms_norm_eps": None, "sliding_window": None}),
    "phi3-defaults": ("phi3", {**_DROP_ROPE, "max_position_embeddings": None,
                               "original_max_position_embeddings": None, "rms_norm_eps": None}),
    "llama_bf16-llama3rope": ("llama_bf16", {"rope_scaling": None, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "gemma3-linearrope": ("gemma3", {"rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
    "phi3-longrope": ("phi3", {"original_max_position_embeddings": 256, "rope_parameters": {
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
        "original_max_position_embeddings": 256,
        "long_factor": [1.0, 1.25, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0],
        "short_factor": [1.0, 1.0, 1.0625, 1.125, 1.25, 1.5, 1.75, 2.0]}}),
}

# Variants converted from a directory with another name and/or with generation_config.json edits
# (general.name/basename/finetune/version/size_label/organization and general.sampling.* keys).
VARIANT_DIR_NAME = {"llama-named": "Llama-3.1-8B-Instruct-v0.2"}
VARIANT_GENERATION = {"llama-named": {"temperature": 0.6, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}}
VARIANTS["llama-named"] = ("llama", {"_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"})
# A typical Hugging Face model card (README.md front matter -> general.license/tags/languages/base_model/dataset)
MODEL_CARD = """---
license: apache-2.0
language:
- en
- fr
- no
tags:
- text-generation
- llama
pipeline_tag: text-generation
library_name: transformers
base_model:
- meta-llama/Llama-3.1-8B-Instruct
- https://huggingface.co/mistralai/Mistral-7B-v0.1
datasets:
  - HuggingFaceH4/ultrachat_200k
  - https://example.org/corpus
model-index:
- name: tiny-llama
  results:
  - task:
      type: text-generation
widget:
  - text: "Once upon a time"
extra_gated_prompt: "You agree to the license"
---
# A tiny Llama

Random weights, for tests.
"""
VARIANT_FILES = {"llama-card": {"README.md": MODEL_CARD}}
# Checkpoints stored as float16 (the converter keeps f16 data in f16: Q/K permutation and Gemma's
# norm + 1 happen in half precision): every tensor of model.safetensors cast to float16.
F16_SOURCE = {"llama-f16src", "gemma3-f16src"}
VARIANTS["llama-f16src"] = ("llama", {"torch_dtype": "float16", "dtype": "float16"})
VARIANTS["gemma3-f16src"] = ("gemma3", {"torch_dtype": "float16", "dtype": "float16"})


def make_f16_source(src: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, str(src / "model.safetensors"))


# Files removed for a variant: SPM Llama with tokenizer.json only (llama.cpp's LlamaHfVocab path)
VARIANT_REMOVE = {"llama-hfvocab": ["tokenizer.model"], "mistral-hfvocab": ["tokenizer.model"]}
VARIANTS["llama-hfvocab"] = ("llama", {})
VARIANTS["mistral-hfvocab"] = ("mistral", {})
# ... and with two tokens added beyond the base vocabulary: one special (listed in
# extra_special_tokens), one plain
VARIANT_REMOVE["llama-hfvocab-added"] = ["tokenizer.model"]
VARIANTS["llama-hfvocab-added"] = ("llama", {})
ADD_TOKENS = {"llama-hfvocab-added"}


def add_tokens(src: Path) -> None:
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    base = len(tok["model"]["vocab"])
    for i, (text, special) in enumerate((("<|im_start|>", True), ("<tool>", False))):
        tok["added_tokens"].append({"id": base + i, "content": text, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": special})
    (src / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["extra_special_tokens"] = list(cfg.get("extra_special_tokens", [])) + ["<|im_start|>"]
    (src / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")

# JSON files other than config.json edited for a variant
VARIANT_JSON_EDITS = {"llama-noprefix": {"tokenizer_config.json": {"add_prefix_space": False}}}
VARIANTS["llama-noprefix"] = ("llama", {})
VARIANTS["llama-card"] = ("llama", {})
# Gemma 3 as a multimodal checkpoint: config nested under text_config, tensors under
# language_model., plus vision/projector tensors the text conversion must skip.
VARIANTS["gemma3-multimodal"] = ("gemma3", {})
MULTIMODAL = {"gemma3-multimodal"}


def make_multimodal(src: Path) -> None:
    """Rewrite a text-only Gemma 3 checkpoint in place as Gemma3ForConditionalGeneration."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    text = json.loads((src / "config.json").read_text())
    text.pop("architectures", None)
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": text, "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32,
                                                     "intermediate_size": 64, "num_hidden_layers": 1,
                                                     "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
              "mm_tokens_per_image": 4, "boi_token_index": 4, "eoi_token_index": 5, "image_token_index": 6}
    (src / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {f"language_model.{k}": v for k, v in load_file(str(src / "model.safetensors")).items()}
    rng = np.random.default_rng(0)
    tensors["vision_tower.vision_model.embeddings.patch_embedding.weight"] = rng.standard_normal((32, 3, 14, 14)).astype(np.float32)
    tensors["multi_modal_projector.mm_input_projection_weight"] = rng.standard_normal((32, 64)).astype(np.float32)
    tensors["multi_modal_projector.mm_soft_emb_norm.weight"] = rng.standard_normal(32).astype(np.float32)
    save_file(tensors, str(src / "model.safetensors"))


def edit_config(config: dict, edits: dict) -> dict:
    for key, value in edits.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


# Runs inside the llama.cpp directory: optionally pin the pre-tokenizer name, then the converter's main().
DRIVER = """
import sys, runpy
sys.path.insert(0, 'gguf-py'); sys.path.insert(0, '.')
forced = sys.argv.pop(1)
if forced != '-':
    from conversion.base import TextModel
    TextModel.get_vocab_base_pre = lambda self, tokenizer: forced
sys.argv[0] = 'convert_hf_to_gguf.py'
runpy.run_path('convert_hf_to_gguf.py', run_name='__main__')
"""


def gguf_record(path: Path) -> dict:
    import numpy as np  # noqa: F401  (gguf needs it)
    from gguf import GGUFReader

    r = GGUFReader(path)
    meta = {}
    for field in r.fields.values():
        if field.name.startswith("GGUF."):
            continue
        meta[field.name] = {"type": field.types[0].name,
                            "item_type": field.types[-1].name if len(field.types) > 1 else None,
                            "value": field.contents()}
    tensors = {t.name: {"type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                        "n_bytes": int(t.n_bytes), "sha256": hashlib.sha256(t.data.tobytes()).hexdigest()}
               for t in r.tensors}
    data = path.read_bytes()
    return {"file": path.name, "file_size": len(data), "file_sha256": hashlib.sha256(data).hexdigest(),
            "metadata": meta, "tensor_order": [t.name for t in r.tensors], "tensors": tensors}


def bpe_check_hashes() -> dict:
    """The pre-tokenizer check hash of each byte-level BPE checkpoint, as the converter computes it
    (AutoTokenizer.encode of llama.cpp's check text, sha256 of str(ids))."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from llmcli.vocab.bpe_hashes import CHECK_TEXT

    return {name: hashlib.sha256(str(AutoTokenizer.from_pretrained(DATA / "hf" / name).encode(CHECK_TEXT))
                                 .encode()).hexdigest() for name in FORCED_PRE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp", type=Path, required=True)
    ap.add_argument("--variant", action="append", help="only these config variants (and no outtype jobs)")
    args = ap.parse_args()
    out_dir = DATA / "convert_ref"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bpe_check_hashes.json").write_text(json.dumps(bpe_check_hashes(), indent=1) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        for name, outtype in ([] if args.variant else JOBS):
            out = Path(tmp) / f"{name}-{outtype}.gguf"
            cmd = [sys.executable, "-c", DRIVER, FORCED_PRE.get(name, "-"), str(DATA / "hf" / name),
                   "--outtype", outtype, "--outfile", str(out)]
            subprocess.run(cmd, cwd=args.llama_cpp, check=True, capture_output=True)
            rec = gguf_record(out)
            rec["command"] = f"convert_hf_to_gguf.py tests/data/hf/{name} --outtype {outtype}" + (
                f" (tokenizer.ggml.pre forced to {FORCED_PRE[name]})" if name in FORCED_PRE else "")
            (out_dir / f"{name}-{outtype}.json").write_text(json.dumps(rec, indent=1, ensure_ascii=False))
            print(name, outtype, rec["file_sha256"], rec["file_size"])
        (out_dir / "variants").mkdir(exist_ok=True)
        for variant, (name, edits) in VARIANTS.items():
            if args.variant and variant not in args.variant:
                continue
            src = Path(tmp) / "variants" / variant / VARIANT_DIR_NAME.get(variant, name)
            shutil.copytree(DATA / "hf" / name, src, ignore=shutil.ignore_patterns("reference"))
            config = edit_config(json.loads((src / "config.json").read_text()), edits)
            (src / "config.json").write_text(json.dumps(config, indent=2))
            if variant in MULTIMODAL:
                make_multimodal(src)
            if variant in F16_SOURCE:
                make_f16_source(src)
            for fname in VARIANT_REMOVE.get(variant, []):
                (src / fname).unlink()
            if variant in ADD_TOKENS:
                add_tokens(src)
            for fname, file_edits in VARIANT_JSON_EDITS.get(variant, {}).items():
                content = edit_config(json.loads((src / fname).read_text()), file_edits)
                (src / fname).write_text(json.dumps(content, indent=2))
            for fname, text in VARIANT_FILES.get(variant, {}).items():
                (src / fname).write_text(text, encoding="utf-8")
            gen_edits = VARIANT_GENERATION.get(variant, {})
            if gen_edits:
                gen = edit_config(json.loads((src / "generation_config.json").read_text()), gen_edits)
                (src / "generation_config.json").write_text(json.dumps(gen, indent=2))
            out = Path(tmp) / f"{variant}.gguf"
            cmd = [sys.executable, "-c", DRIVER, FORCED_PRE.get(name, "-"), str(src), "--outtype", "f16",
                   "--outfile", str(out)]
            subprocess.run(cmd, cwd=args.llama_cpp, check=True, capture_output=True)
            rec = gguf_record(out)
            rec["config_edits"] = edits
            rec["dir_name"] = src.name
            rec["generation_config_edits"] = gen_edits
            rec["extra_files"] = VARIANT_FILES.get(variant, {})
            rec["make_multimodal"] = variant in MULTIMODAL
            rec["make_f16_source"] = variant in F16_SOURCE
            rec["remove_files"] = VARIANT_REMOVE.get(variant, [])
            rec["add_tokens"] = variant in ADD_TOKENS
            rec["file_edits"] = VARIANT_JSON_EDITS.get(variant, {})
            rec["command"] = f"convert_hf_to_gguf.py <tests/data/hf/{name} with config.json edits> --outtype f16"
            (out_dir / "variants" / f"{variant}-f16.json").write_text(json.dumps(rec, indent=1, ensure_ascii=False))
            print(variant, rec["file_sha256"], rec["file_size"])

if __name__ == "__main__":
    main()
