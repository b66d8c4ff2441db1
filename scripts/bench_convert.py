#!/usr/bin/env python3
"""Benchmark `llmcli convert` on a synthetic sharded checkpoint (>= 1.5 GB): wall time and peak RSS.

Builds a LLaMA-shaped checkpoint with random bfloat16 weights (hidden 2048, 16 layers, FFN 5632,
32 heads / 4 KV heads, vocab 32000: ~835M parameters, ~1.67 GB in 4 shards + index, the SentencePiece
tokenizer of tests/data/hf/llama padded to 32000) in a temporary directory, converts it to f16 in a
child process and reports the child's wall time and peak RSS (ru_maxrss) next to the size of the
largest tensor. convert holds one tensor at a time, so peak RSS should be about
(largest tensor as float32 + its encoded copy) + the interpreter's constant.

    python scripts/bench_convert.py [--outtype f16] [--layers 16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from make_synthetic_checkpoint import write_bf16_safetensors  # scripts/, beside this one

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json"]


def build_checkpoint(d: Path, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int) -> dict:
    head_dim = hidden // heads
    per_layer = {
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (heads * head_dim, hidden),
        "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "mlp.gate_proj.weight": (ffn, hidden),
        "mlp.up_proj.weight": (ffn, hidden),
        "mlp.down_proj.weight": (hidden, ffn),
    }
    shards: list[dict[str, tuple[int, ...]]] = [{"model.embed_tokens.weight": (vocab, hidden)}]
    per_shard = max(1, layers // 3)
    for b in range(layers):
        if b % per_shard == 0:
            shards.append({})
        shards[-1].update({f"model.layers.{b}.{k}": v for k, v in per_layer.items()})
    shards[-1].update({"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)})
    rng = np.random.default_rng(0)
    weight_map, total = {}, 0
    for i, tensors in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        total += write_bf16_safetensors(d / fname, tensors, rng)
        weight_map.update({n: fname for n in tensors})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "head_dim": head_dim, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": vocab, "bos_token_id": 1,
              "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    (d / "config.json").write_text(json.dumps(config, indent=2))
    for f in TOKENIZER_FILES:
        shutil.copy(ROOT / "tests" / "data" / "hf" / "llama" / f, d / f)
    largest = max(int(np.prod(s)) for t in shards for s in t.values())
    return {"bytes": total, "shards": len(shards), "largest_tensor_elements": largest,
            "parameters": sum(int(np.prod(s)) for t in shards for s in t.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outtype", default="f16")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--keep", type=Path, help="build the checkpoint here and keep it")
    args = ap.parse_args()

    if args.keep:
        args.keep.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=args.keep.parent if args.keep else None))
    model = args.keep or tmp / "synthetic-llama"
    try:
        if not (model / "config.json").is_file():
            model.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            info = build_checkpoint(model, args.layers, 2048, 5632, 32, 4, 32000)
            print(f"built {model}: {info['parameters'] / 1e6:.0f}M parameters, {info['bytes'] / 2**30:.2f} GiB "
                  f"bf16 in {info['shards']} shards ({time.perf_counter() - t0:.1f} s)")
        else:
            info = {"largest_tensor_elements": 32000 * 2048}
        # the constant: the same child converting the tiny test checkpoint (interpreter, numpy, numba)
        child_base = ("import sys; from llmcli.convert import convert; convert(sys.argv[1], sys.argv[2], "
                      "outtype=sys.argv[3])")
        subprocess.run([sys.executable, "-c", child_base, str(ROOT / "tests" / "data" / "hf" / "llama"),
                        str(tmp / "tiny.gguf"), args.outtype], check=True)
        base_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out = tmp / f"out-{args.outtype}.gguf"
        # the library call the CLI makes, in a fresh interpreter (so ru_maxrss is convert's alone)
        child = ("import json, sys; from llmcli.convert import convert; "
                 "print(json.dumps(convert(sys.argv[1], sys.argv[2], outtype=sys.argv[3]).as_dict()))")
        cmd = [sys.executable, "-c", child, str(model), str(out), args.outtype]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"convert failed: {proc.stderr.strip()}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        summary = json.loads(proc.stdout)
        largest_f32 = info["largest_tensor_elements"] * 4
        print(f"convert --outtype {args.outtype}: {summary['tensors']} tensors, {summary['bytes'] / 2**30:.2f} GiB "
              f"written in {wall:.1f} s wall ({summary['bytes'] / 2**20 / wall:.0f} MiB/s)")
        print(f"peak RSS of the child: {peak_kib / 1024:.0f} MiB; largest tensor {largest_f32 / 2**20:.0f} MiB as "
              f"float32 ({largest_f32 / 2**21:.0f} MiB bf16); peak RSS / largest float32 tensor = "
              f"{peak_kib * 1024 / largest_f32:.2f}")
        print(f"constant (same child converting the 0.2M-parameter test model): {base_kib / 1024:.0f} MiB; "
              f"peak minus constant = {(peak_kib - base_kib) / 1024:.0f} MiB = "
              f"{(peak_kib - base_kib) * 1024 / largest_f32:.2f} x the largest float32 tensor")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
