#!/usr/bin/env python3
"""Make tiny checkpoints + real-tool references for architectures the reference pack lacks.

Run in the scratch venv that has torch + transformers (never imported by llmcli or its tests):

    /work/refvenv/bin/python scripts/make_arch_references.py [--llama-cpp DIR] [--only NAME ...]

For each of qwen3, qwen2moe, gemma, gemma2, baichuan it
1. builds a tiny random checkpoint like the pack's (hidden 64, 4 heads, intermediate 128, 2 layers;
   matrices N(0,0.1), norm weights N(1,0.1) or N(0,0.1) for Gemma's (1+w) norms, biases N(0,0.1);
   float32) with the pack's tokenizer files, into tests/data/hf/<name>/;
2. writes reference/prompt.json, logits.npy, greedy.json, info.json with transformers (float32);
3. converts it with llama.cpp's own convert_hf_to_gguf.py (commit 0c1e570, f32 and f16) into a
   scratch directory and stores JSON records of the GGUFs in tests/data/gguf_ref/<name>-<f32|f16>.json
   (make_test_data.gguf_record, the format of the pack's records);
4. if llama-cpp-python is importable, runs llama.cpp on the prompt ids (n_threads=2, logits_all) and
   writes gguf_ref/<name>.llamacpp.json + <name>-f32.llamacpp_logits.npy like the pack;
5. records a few more --outtype conversions (EXTRA_OUTTYPES: bf16, q8_0, auto) as
   gguf_ref/<name>-<outtype>.json.

Per-architecture choices (each exercises what llama.cpp reads for that architecture):
* qwen3    Qwen3ForCausalLM, Qwen2 byte-level BPE, head_dim 32 (q_proj 64 -> 128, != hidden/heads),
           q_norm/k_norm, tied embeddings (as Qwen3-0.6B..4B), rope_theta 1e6.
* qwen2moe Qwen2MoeForCausalLM, Qwen2 BPE, 4 experts top-2 (moe_intermediate_size 32), shared expert
           (shared_expert_intermediate_size 64) with its sigmoid gate, q/k/v biases, untied
           (llama.cpp's qwen2moe requires output.weight),
           norm_topk_prob false (llama.cpp does not renormalise Qwen2MoE's top-k weights).
           Stored the way transformers writes it (and the real checkpoints are): per-expert tensors.
* gemma    GemmaForCausalLM, Gemma SPM, 1 KV head (MQA as Gemma-2B), head_dim 32 (!= 64/4).
* gemma2   Gemma2ForCausalLM, Gemma SPM, attn softcap 3.0, final softcap 5.0, sliding_window 16
           (shorter than the 39-id prompt, so the sliding layer really slides; layer 0 sliding,
           layer 1 full), query_pre_attn_scalar 16 == head_dim: llama.cpp does not read
           query_pre_attn_scalar, it scales by 1/sqrt(head_dim) for every Gemma 2 but the 27B.
* baichuan BaichuanForCausalLM (Baichuan-7B layout) built by hand: its trust_remote_code modelling
           files are not available offline. config model_type "baichuan", fused
           `self_attn.W_pack.weight` = cat(q, k, v) in HF (rotate-half) row order, no
           num_key_value_heads (MHA, as Baichuan-7B: the converter splits W_pack in 3 equal parts).
           The reference logits come from an equivalent LlamaForCausalLM (q/k/v = the W_pack thirds).
           llama.cpp picks 7B (rope) vs 13B (ALiBi) by n_layer ONLY (32 -> 7B, 40 -> 13B, anything
           else -> "unknown", which applies NO position encoding at all), so this checkpoint has 32
           layers; to keep it small it is narrower than the others (hidden 32, 2 heads of 16,
           intermediate 64) and stored float16 (like the pack's kq model); references are float32
           compute on the upcast weights.
           llama.cpp's converter at 0c1e570 crashes on every Baichuan checkpoint: in
           BaichuanModel.modify_tensors the non-W_pack branch does
           `yield from self.modify_tensors(data_torch, self.map_tensor_name(name), bid)`, i.e. it calls
           itself (not the base class) with an already-mapped name, which recurses until the name
           cannot be mapped. We convert with a scratch COPY of the converter in which that line is
           `yield from super().modify_tensors(data_torch, name, bid)` (the base class maps the name),
           which is what the code clearly means; nothing else is changed.

Byte-level BPE vocabularies: llama.cpp does not know the pre-tokenizer hash of the pack's Qwen2 BPE,
so (as for the pack's qwen2) `tokenizer.ggml.pre` is forced to "qwen2" by patching
TextModel.get_vocab_base_pre for the conversion run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_test_data import gguf_record  # noqa: E402

DATA = ROOT / "tests" / "data"
PACK = ROOT.parent / "shared" / "reference"
LLAMA_CPP = Path("/work/llsrc/llama_cpp_python-0.3.36/vendor/llama.cpp")
WORK = Path(tempfile.gettempdir()) / "llmcli_arch_refs"
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
N_GREEDY = 16

QWEN_TOKENIZER = ("qwen2", ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"])
GEMMA_TOKENIZER = ("gemma3", ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja"])
SPM_TOKENIZER = ("llama", ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja"])

BASE = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)

# name -> how to build it. "config" kwargs go to the transformers config class named "config_class".
MODELS = {
    "qwen3": dict(
        config_class="Qwen3Config", seed=2101, tokenizer=QWEN_TOKENIZER, gemma_norms=False, pre="qwen2",
        config={**BASE, "head_dim": 32, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "attention_bias": False,
                "tie_word_embeddings": True, "bos_token_id": 997, "eos_token_id": 999},
    ),
    "qwen2moe": dict(
        config_class="Qwen2MoeConfig", seed=2102, tokenizer=QWEN_TOKENIZER, gemma_norms=False, pre="qwen2",
        config={**BASE, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                "shared_expert_intermediate_size": 64, "norm_topk_prob": False, "rms_norm_eps": 1e-6,
                "rope_theta": 1e6, "tie_word_embeddings": False, "bos_token_id": 997, "eos_token_id": 999},
    ),
    "gemma": dict(
        config_class="GemmaConfig", seed=2103, tokenizer=GEMMA_TOKENIZER, gemma_norms=True, pre=None,
        config={**BASE, "num_key_value_heads": 1, "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh",
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True,
                "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
    ),
    "gemma2": dict(
        config_class="Gemma2Config", seed=2104, tokenizer=GEMMA_TOKENIZER, gemma_norms=True, pre=None,
        config={**BASE, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 3.0,
                "final_logit_softcapping": 5.0, "sliding_window": 16, "tie_word_embeddings": True,
                "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
    ),
    "baichuan": dict(
        config_class="LlamaConfig", seed=2105, tokenizer=SPM_TOKENIZER, gemma_norms=False, pre=None,
        hand_made="baichuan", stored_dtype="float16",
        config={"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 32,
                "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
                "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    ),
}

ARCH_NAMES = {"qwen3": "Qwen3ForCausalLM", "qwen2moe": "Qwen2MoeForCausalLM", "gemma": "GemmaForCausalLM",
              "gemma2": "Gemma2ForCausalLM", "baichuan": "BaichuanForCausalLM"}


# ----------------------------------------------------------------------------------------------
# 1. checkpoints
# ----------------------------------------------------------------------------------------------

def init_weights(model, seed: int, gemma_norms: bool) -> None:
    """Pack-style random init, deterministic: parameters in name order from one generator."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    norm_mean = 0.0 if gemma_norms else 1.0
    params = dict(model.named_parameters())  # tied parameters appear once
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            mean = norm_mean if (p.ndim == 1 and "norm" in name) else 0.0
            p.copy_(torch.normal(mean, 0.1, size=tuple(p.shape), generator=gen))


def add_v4_keys(config_path: Path, cfg: dict, dtype: str) -> None:
    """The pack's config.json files also carry v4-style keys (rope_theta, torch_dtype, rope_scaling)."""
    data = json.loads(config_path.read_text())
    if "rope_theta" in cfg:
        data["rope_theta"] = cfg["rope_theta"]
    data.setdefault("rope_scaling", None)
    data["torch_dtype"] = dtype
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_tokenizer(spec, dst: Path) -> None:
    src_name, files = spec
    for f in files:
        shutil.copyfile(PACK / "hf" / src_name / f, dst / f)


def build_transformers_model(name: str, spec: dict, out: Path):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    cfg_cls = getattr(transformers, spec["config_class"])
    cfg = cfg_cls(**spec["config"])
    cfg.architectures = [ARCH_NAMES[name]]
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, spec["seed"], spec["gemma_norms"])
    model.eval()
    model.save_pretrained(out)
    add_v4_keys(out / "config.json", spec["config"], "float32")
    return model


def build_baichuan(spec: dict, out: Path):
    """Baichuan-7B layout by hand; returns the equivalent LlamaForCausalLM for the references."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    c = spec["config"]
    cfg = LlamaConfig(**c)
    torch.manual_seed(spec["seed"])
    llama = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(llama, spec["seed"], False)
    # the checkpoint is float16: round the weights once so checkpoint and reference model agree
    with torch.no_grad():
        for p in llama.parameters():
            p.copy_(p.half().float())
    llama.eval()

    sd = llama.state_dict()
    tensors = {}
    for key, val in sd.items():
        m = re.match(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight", key)
        if m:
            if m.group(2) == "q":
                i = m.group(1)
                pre = f"model.layers.{i}.self_attn."
                tensors[pre + "W_pack.weight"] = torch.cat(
                    [sd[pre + "q_proj.weight"], sd[pre + "k_proj.weight"], sd[pre + "v_proj.weight"]], dim=0)
            continue
        tensors[key] = val
    tensors = {k: v.half().contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    config = {
        "architectures": ["BaichuanForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_baichuan.BaiChuanConfig",
                     "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"},
        "bos_token_id": c["bos_token_id"], "eos_token_id": c["eos_token_id"], "pad_token_id": c["pad_token_id"],
        "hidden_act": "silu", "hidden_size": c["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": c["intermediate_size"], "max_position_embeddings": c["max_position_embeddings"],
        "model_type": "baichuan", "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"], "rms_norm_eps": c["rms_norm_eps"],
        "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
        "vocab_size": c["vocab_size"],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = {"bos_token_id": c["bos_token_id"], "eos_token_id": c["eos_token_id"],
           "pad_token_id": c["pad_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return llama


# ----------------------------------------------------------------------------------------------
# 2. transformers references
# ----------------------------------------------------------------------------------------------

def hf_references(name: str, spec: dict, model, out: Path) -> dict:
    import tokenizers
    import torch
    import transformers
    from transformers import AutoTokenizer

    ref = out / "reference"
    ref.mkdir(exist_ok=True)
    # Baichuan's config.json names remote code (auto_map); its tokenizer files are the pack's
    # Llama ones, copied unchanged, so tokenize with those.
    tok_dir = PACK / "hf" / spec["tokenizer"][0] if spec.get("hand_made") else out
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = tok(PROMPT)["input_ids"]
    pack_prompt = json.loads((PACK / "hf" / spec["tokenizer"][0] / "reference" / "prompt.json").read_text())
    if ids != pack_prompt["input_ids"]:
        raise SystemExit(f"{name}: prompt ids differ from the pack's {spec['tokenizer'][0]} prompt ids")

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    np.save(ref / "logits.npy", logits.astype(np.float32))
    (ref / "prompt.json").write_text(json.dumps({
        "prompt": PROMPT, "input_ids": ids, "tokens": tok.convert_ids_to_tokens(ids),
        "logits_file": "logits.npy", "logits_shape": list(logits.shape),
        "argmax_per_position": [int(a) for a in logits.argmax(-1)],
    }, ensure_ascii=False, indent=1))

    seq, steps = list(ids), []
    with torch.no_grad():
        for _ in range(N_GREEDY):
            last = model(torch.tensor([seq])).logits[0, -1].float()
            top = torch.topk(last, 2)
            steps.append({"id": int(top.indices[0]), "logit": float(top.values[0]),
                          "margin_to_2nd": float(top.values[0] - top.values[1]), "second_id": int(top.indices[1])})
            seq.append(int(top.indices[0]))
        gen_ids = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=N_GREEDY,
                                 min_new_tokens=N_GREEDY)[0, len(ids):].tolist()
    new = seq[len(ids):]
    (ref / "greedy.json").write_text(json.dumps({
        "prompt": PROMPT, "input_ids": ids, "n_new_tokens": N_GREEDY, "greedy_new_ids": new,
        "greedy_text": tok.decode(new), "full_text": tok.decode(seq, skip_special_tokens=True),
        "generate_new_ids": gen_ids, "generate_agrees_with_manual_loop": gen_ids == new,
        "note": "greedy_new_ids: argmax loop with full recompute, never stops at EOS; generate_new_ids: "
                "model.generate(do_sample=False, min_new_tokens=16)",
        "steps": steps,
    }, ensure_ascii=False, indent=1))

    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "name": name, "architecture": ARCH_NAMES[name],
        "model_type": json.loads((out / "config.json").read_text())["model_type"],
        "stored_dtype": spec.get("stored_dtype", "float32"), "reference_compute_dtype": "float32",
        "tokenizer_from": f"pack hf/{spec['tokenizer'][0]} (files copied unchanged)",
        "tokenizer_len": len(tok), "config_vocab_size": spec["config"]["vocab_size"], "n_params": n_params,
        "seed": spec["seed"],
        "init": "all matrices N(0,0.1); norm weights N(%s,0.1); biases N(0,0.1)"
                % ("0.0" if spec["gemma_norms"] else "1.0"),
        "reference_model": "LlamaForCausalLM with q/k/v = the W_pack thirds" if name == "baichuan"
                           else ARCH_NAMES[name] + " (eager attention)",
        "transformers": transformers.__version__, "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "made_by": "scripts/make_arch_references.py",
    }
    (ref / "info.json").write_text(json.dumps(info, indent=1))
    return {"ids": ids, "logits": logits, "greedy": new, "tokenizer": tok}


# ----------------------------------------------------------------------------------------------
# 3. llama.cpp conversion
# ----------------------------------------------------------------------------------------------

CONVERT_WRAPPER = r'''
import runpy, sys
llama_dir, pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, llama_dir + "/gguf-py"); sys.path.insert(0, llama_dir)
if pre != "-":
    import conversion.base as base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [llama_dir + "/convert_hf_to_gguf.py"] + sys.argv[3:]
runpy.run_path(llama_dir + "/convert_hf_to_gguf.py", run_name="__main__")
'''

BAICHUAN_BUG = "yield from self.modify_tensors(data_torch, self.map_tensor_name(name), bid)"
BAICHUAN_FIX = "yield from super().modify_tensors(data_torch, name, bid)"


def fixed_converter_copy(llama_dir: Path) -> Path:
    """A scratch copy of the converter with Baichuan's self-recursion fixed (see module docstring)."""
    dst = WORK / "llama_cpp_baichuan_fix"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy(llama_dir / "convert_hf_to_gguf.py", dst)
    shutil.copytree(llama_dir / "conversion", dst / "conversion")
    shutil.copytree(llama_dir / "gguf-py", dst / "gguf-py")
    path = dst / "conversion" / "baichuan.py"
    src = path.read_text()
    if src.count(BAICHUAN_BUG) != 1:
        raise SystemExit("baichuan.py does not contain the expected recursion line; check the converter")
    path.write_text(src.replace(BAICHUAN_BUG, BAICHUAN_FIX))
    return dst


def convert(name: str, spec: dict, hf_dir: Path, llama_dir: Path, outtype: str) -> tuple[Path, str, bool]:
    conv_dir = fixed_converter_copy(llama_dir) if name == "baichuan" else llama_dir
    out = WORK / "gguf" / f"{name}-{outtype}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = WORK / "convert_wrapper.py"
    wrapper.write_text(CONVERT_WRAPPER)
    hashes = []
    for attempt in range(2):  # twice, to record whether a fresh conversion is byte-identical
        if out.exists():
            out.unlink()
        cmd = [sys.executable, str(wrapper), str(conv_dir), spec["pre"] or "-", str(hf_dir),
               "--outfile", str(out), "--outtype", outtype]
        env = dict(os.environ, NO_LOCAL_GGUF="1")
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(conv_dir))
        if res.returncode != 0:
            raise SystemExit(f"convert {name} {outtype} failed:\n{res.stderr[-4000:]}")
        hashes.append(hashlib.sha256(out.read_bytes()).hexdigest())
    command = f"convert_hf_to_gguf.py hf/{name} --outfile gguf/{name}-{outtype}.gguf --outtype {outtype}"
    if spec["pre"]:
        command += f" (BPE pre-tokenizer forced to '{spec['pre']}')"
    if name == "baichuan":
        command += " (scratch copy with BaichuanModel.modify_tensors' self-recursion fixed)"
    return out, command, hashes[0] == hashes[1]


# ----------------------------------------------------------------------------------------------
# 4. llama.cpp outputs
# ----------------------------------------------------------------------------------------------

def llama_cpp_outputs(gguf: Path, ids: list[int], hf: dict) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=2, n_ctx=512, logits_all=True, verbose=False)
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    steps, new = [], []
    last = logits[-1]
    for _ in range(N_GREEDY):
        order = np.argsort(-last, kind="stable")
        steps.append({"id": int(order[0]), "logit": float(last[order[0]]),
                      "margin_to_2nd": float(last[order[0]] - last[order[1]]), "second_id": int(order[1])})
        new.append(int(order[0]))
        llm.eval([int(order[0])])
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    diff = np.abs(logits - hf["logits"])
    text = llm.detokenize(new).decode("utf-8", errors="replace")
    del llm
    return {"logits": logits, "argmax_per_position": [int(a) for a in logits.argmax(-1)], "greedy_new_ids": new,
            "greedy_text": text, "greedy_steps": steps, "greedy_matches_hf": new == hf["greedy"],
            "vs_hf_logits": {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                             "argmax_agree_fraction": float((logits.argmax(-1) == hf["logits"].argmax(-1)).mean()),
                             "hf_logit_std": float(hf["logits"].std())}}


def have_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------

def make(name: str, llama_dir: Path, with_llama_cpp: bool) -> None:
    spec = MODELS[name]
    out = DATA / "hf" / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    copy_tokenizer(spec["tokenizer"], out)
    if spec.get("hand_made") == "baichuan":
        model = build_baichuan(spec, out)
    else:
        model = build_transformers_model(name, spec, out)
    hf = hf_references(name, spec, model, out)

    refdir = DATA / "gguf_ref"
    files = {}
    for outtype in ("f32", "f16"):
        gguf, command, stable = convert(name, spec, out, llama_dir, outtype)
        rec = gguf_record(gguf)
        (refdir / f"{name}-{outtype}.json").write_text(json.dumps(rec, ensure_ascii=False, indent=1))
        entry = {"gguf": f"gguf/{gguf.name}", "gguf_sha256": rec["file_sha256"], "gguf_bytes": rec["file_size"],
                 "converter_command": command, "fresh_conversion_byte_identical": stable}
        if with_llama_cpp:
            lc = llama_cpp_outputs(gguf, hf["ids"], hf)
            if outtype == "f32":
                np.save(refdir / f"{name}-f32.llamacpp_logits.npy", lc["logits"])
                entry["logits_file"] = f"gguf/{name}-f32.llamacpp_logits.npy"
            entry["logits_shape"] = list(lc.pop("logits").shape)
            entry.update(lc)
        files[outtype] = entry
        print(f"{name} {outtype}: {rec['file_size']} bytes sha256 {rec['file_sha256'][:16]} stable={stable}"
              + (f" vs_hf max {entry['vs_hf_logits']['max_abs_diff']:.4f} greedy_match {entry['greedy_matches_hf']}"
                 if with_llama_cpp else ""))
    if with_llama_cpp:
        (refdir / f"{name}.llamacpp.json").write_text(json.dumps({
            "model": name, "llama_cpp": "llama.cpp 0c1e570 via llama-cpp-python 0.3.36 bindings",
            "settings": {"n_threads": 2, "n_ctx": 512, "kv_cache": "f16 (default)", "logits_all": True,
                         "greedy": "argmax of llama.cpp logits, prompt evaluated once then 1 token per step "
                                   "with the KV cache; no EOS stop"},
            "prompt": PROMPT, "prompt_ids": hf["ids"], "files": files,
            "note": "only the f32 file's logits are stored as .npy (size budget); f16 has the summary",
            "made_by": "scripts/make_arch_references.py",
        }, ensure_ascii=False, indent=1))
    for path in out.rglob("*"):  # plain permissions (the pack's files are read-only, save_file's 0600)
        path.chmod(0o755 if path.is_dir() else 0o644)


# records only (no llama.cpp run): other --outtype paths where these architectures have something
# particular - 3-D expert tensors in Q8_0 / BF16, a float16 checkpoint going to BF16 / Q8_0 / auto
EXTRA_OUTTYPES = {"qwen2moe": ["bf16", "q8_0"], "baichuan": ["bf16", "q8_0", "auto"], "gemma2": ["q8_0"]}


def make_extra_records(name: str, llama_dir: Path) -> None:
    spec = MODELS[name]
    for outtype in EXTRA_OUTTYPES.get(name, []):
        gguf, command, stable = convert(name, spec, DATA / "hf" / name, llama_dir, outtype)
        rec = gguf_record(gguf)
        rec["converter_command"] = command
        rec["fresh_conversion_byte_identical"] = stable
        (DATA / "gguf_ref" / f"{name}-{outtype}.json").write_text(json.dumps(rec, ensure_ascii=False, indent=1))
        print(f"{name} {outtype}: {rec['file_size']} bytes sha256 {rec['file_sha256'][:16]} stable={stable}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp", type=Path, default=LLAMA_CPP, help="llama.cpp source tree (commit 0c1e570)")
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS), help="only these models")
    ap.add_argument("--no-llama-cpp-run", action="store_true", help="skip the llama-cpp-python outputs")
    ap.add_argument("--extra-only", action="store_true",
                    help="keep the checkpoints; only (re)write the EXTRA_OUTTYPES records")
    args = ap.parse_args()
    with_lc = have_llama_cpp() and not args.no_llama_cpp_run
    if not with_lc:
        print("llama-cpp-python not used: no llama.cpp logits/greedy outputs will be written")
    for name in args.only or list(MODELS):
        if not args.extra_only:
            make(name, args.llama_cpp, with_lc)
        make_extra_records(name, args.llama_cpp)


if __name__ == "__main__":
    main()
