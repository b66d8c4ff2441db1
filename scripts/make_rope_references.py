#!/usr/bin/env python3
"""Make tiny models + real-tool references for the RoPE scaling types (engine tests).

Run in the scratch venv with torch + transformers + llama-cpp-python (never used by llmcli or tests):

    /work/refvenv/bin/python scripts/make_rope_references.py

For each variant below it builds a 1-layer random checkpoint (hidden 32, 2 heads of 16, 1 KV head,
intermediate 32, tied embeddings; matrices N(0, 0.1), norms N(1, 0.1)) with the pack's tokenizer,
computes transformers float32 logits for the pack's prompt ids (+ 16 greedy tokens), converts it with
llama.cpp's own convert_hf_to_gguf.py (commit 0c1e570) to f16, runs llama.cpp on the same ids
(llama-cpp-python 0.3.36, f16 KV cache, n_ctx as listed), and writes tests/data/rope/<variant>/:
model-f16.gguf, hf_logits.npy and llamacpp_logits.npy (rows ROWS only, size budget), reference.json.

Variants: linear (factor 4); yarn (factor 4, original context 128); llama3 (factor 8, low/high
frequency factors 1/4, original context 64: llama.cpp gets a rope_freqs tensor); Phi-3 LongRoPE with
distinct short/long factors: `longrope_short`, original context 256, the 38-id prompt, n_ctx 256
(both tools use the short factors), and `longrope_long`, original context 64, the prompt repeated to
76 ids, n_ctx 256 (transformers switches to the long factors past 64 tokens, llama.cpp when its
context - always padded to a multiple of 256 - exceeds 64).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "rope"
PACK = ROOT.parent / "shared" / "reference"
LLAMA_CPP = Path("/work/llsrc/llama_cpp_python-0.3.36/vendor/llama.cpp")
N_GREEDY = 16
SMALL = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, tie_word_embeddings=True)
SPM_FILES = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
LONG = [1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0]
SHORT = [1.0, 1.0, 1.1, 1.2, 1.5, 2.0, 2.5, 3.0]

VARIANTS = {
    "linear": dict(cls="LlamaConfig", arch="LlamaForCausalLM", tok="llama", n_ctx=512, repeat=1,
                   cfg=dict(vocab_size=1000, max_position_embeddings=512,
                            rope_scaling={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})),
    "yarn": dict(cls="LlamaConfig", arch="LlamaForCausalLM", tok="llama", n_ctx=512, repeat=1,
                 cfg=dict(vocab_size=1000, max_position_embeddings=512,
                          rope_scaling={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                        "original_max_position_embeddings": 128})),
    "llama3": dict(cls="LlamaConfig", arch="LlamaForCausalLM", tok="llama", n_ctx=512, repeat=1,
                   cfg=dict(vocab_size=1000, max_position_embeddings=512,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                          "rope_theta": 500000.0})),
    "longrope_short": dict(cls="Phi3Config", arch="Phi3ForCausalLM", tok="phi3", n_ctx=256, repeat=1,
                           cfg=dict(vocab_size=1024, max_position_embeddings=1024, pad_token_id=1000,
                                    original_max_position_embeddings=256,
                                    rope_scaling={"rope_type": "longrope", "long_factor": LONG,
                                                  "short_factor": SHORT, "rope_theta": 10000.0,
                                                  "original_max_position_embeddings": 256})),
    "longrope_long": dict(cls="Phi3Config", arch="Phi3ForCausalLM", tok="phi3", n_ctx=256, repeat=2,
                          cfg=dict(vocab_size=1024, max_position_embeddings=256, pad_token_id=1000,
                                   original_max_position_embeddings=64,
                                   rope_scaling={"rope_type": "longrope", "long_factor": LONG,
                                                 "short_factor": SHORT, "rope_theta": 10000.0,
                                                 "original_max_position_embeddings": 64})),
}

CONVERT_WRAPPER = r'''
import runpy, sys
llama_dir = sys.argv.pop(1)
sys.path.insert(0, llama_dir + "/gguf-py"); sys.path.insert(0, llama_dir)
sys.argv[0] = llama_dir + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def rows_kept(n: int) -> list[int]:
    return sorted(set(range(0, n, 4)) | {n - 1})


def build(name: str, spec: dict, hf_dir: Path):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    cfg = getattr(transformers, spec["cls"])(**SMALL, **spec["cfg"], rms_norm_eps=1e-5,
                                             bos_token_id=1, eos_token_id=2)
    cfg.architectures = [spec["arch"]]
    seed = 3100 + list(VARIANTS).index(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for pname in sorted(params):
            p = params[pname]
            mean = 1.0 if (p.ndim == 1 and "norm" in pname) else 0.0
            p.copy_(torch.normal(mean, 0.1, size=tuple(p.shape), generator=gen))
    model.eval()
    model.save_pretrained(hf_dir)
    for f in SPM_FILES:
        shutil.copyfile(PACK / "hf" / spec["tok"] / f, hf_dir / f)
    return model, seed


def hf_outputs(model, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
        seq = list(ids)
        for _ in range(N_GREEDY):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return logits, seq[len(ids):]


def convert(hf_dir: Path, out: Path) -> None:
    wrapper = hf_dir.parent / "convert_wrapper.py"
    wrapper.write_text(CONVERT_WRAPPER)
    cmd = [sys.executable, str(wrapper), str(LLAMA_CPP), str(hf_dir), "--outfile", str(out), "--outtype", "f16"]
    res = subprocess.run(cmd, env=dict(os.environ, NO_LOCAL_GGUF="1"), capture_output=True, text=True,
                         cwd=str(LLAMA_CPP))
    if res.returncode != 0:
        raise SystemExit(f"convert {hf_dir.name} failed:\n{res.stderr[-3000:]}")


def llama_cpp_outputs(gguf: Path, ids: list[int], n_ctx: int) -> tuple[np.ndarray, list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=2, n_ctx=n_ctx, logits_all=True, verbose=False)
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    new, last = [], logits[-1]
    for _ in range(N_GREEDY):
        new.append(int(np.argmax(last)))
        llm.eval([new[-1]])
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return logits, new


def make(name: str, spec: dict, work: Path) -> None:
    import torch
    import transformers

    hf_dir = work / name
    model, seed = build(name, spec, hf_dir)
    ids = json.loads((PACK / "hf" / spec["tok"] / "reference" / "prompt.json").read_text())["input_ids"]
    ids = ids * spec["repeat"]
    hf_logits, hf_greedy = hf_outputs(model, ids)
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    gguf = out / "model-f16.gguf"
    convert(hf_dir, gguf)
    lc_logits, lc_greedy = llama_cpp_outputs(gguf, ids, spec["n_ctx"])
    rows = rows_kept(len(ids))
    np.save(out / "hf_logits.npy", hf_logits[rows].astype(np.float32))
    np.save(out / "llamacpp_logits.npy", lc_logits[rows].astype(np.float32))
    diff = np.abs(lc_logits - hf_logits)
    record = {
        "variant": name, "architecture": spec["arch"], "config": {**SMALL, **spec["cfg"]}, "seed": seed,
        "prompt_ids": ids, "n_ctx": spec["n_ctx"], "logit_rows": rows,
        "hf_greedy_new_ids": hf_greedy, "llamacpp_greedy_new_ids": lc_greedy,
        "llamacpp_vs_hf": {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                           "hf_logit_std": float(hf_logits.std())},
        "tools": {"transformers": transformers.__version__, "torch": torch.__version__,
                  "llama_cpp": "llama.cpp 0c1e570 via llama-cpp-python 0.3.36 (f16 KV cache, n_threads 2)",
                  "converter": "convert_hf_to_gguf.py --outtype f16"},
        "made_by": "scripts/make_rope_references.py",
    }
    (out / "reference.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{name}: gguf {gguf.stat().st_size} B, llama.cpp vs hf max {diff.max():.4f}, "
          f"greedy equal {hf_greedy == lc_greedy}")


def main() -> None:
    names = sys.argv[1:] or list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            make(name, VARIANTS[name], Path(tmp))


if __name__ == "__main__":
    main()
