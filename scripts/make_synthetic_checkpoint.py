#!/usr/bin/env python3
"""Write a Hugging Face checkpoint of a real model's shape with seeded random weights.

No weights can be downloaded here, but the bottlenecks of 1B-14B models (conversion memory,
quantization time, weight streaming, KV cache size) only show at their real sizes. This writes
config.json with the real model's hyperparameters, bfloat16 safetensors shards with the real tensor
names and shapes (sharded like the published checkpoints, ~4 GiB per shard, plus the index), and a
working tokenizer: a small one trained for the test checkpoints in ../shared/reference/hf, of the
same kind as the real model's (SentencePiece, or byte-level BPE trained with the real model's split
rules). llama.cpp's converter does not know the small BPE tokenizers' check-text hashes: convert them
with the pre-tokenizer forced, as the reference files in ../shared/reference were (`llmcli convert
--pre NAME`; the script prints the command and writes NAME to `synthetic.json`).
Converters (ours and llama.cpp's convert_hf_to_gguf.py) pad the vocabulary to `vocab_size` with
unused `[PADn]` tokens, so the GGUF has the real vocabulary size and embedding matrix.

Weights are N(0, 0.02) (norm weights 1, or 0 where the model adds 1, as Gemma does), which keeps
activations finite through every layer; the text the models produce is noise.

    python scripts/make_synthetic_checkpoint.py --shape llama-3.2-1b --out /data/llama-3.2-1b
    python scripts/make_synthetic_checkpoint.py --list
    python scripts/make_synthetic_checkpoint.py --shape qwen2.5-7b --out DIR --layers 2   # quick look

Not run by the tests (a 7B checkpoint is 14 GiB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_HF = ROOT.parent / "shared" / "reference" / "hf"
SHARD_BYTES = 4 << 30
# Rows of random numbers generated per write: bounds the script's memory to ~64 MiB of float32.
WRITE_CHUNK_BYTES = 64 << 20
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class Shape:
    """A published model's hyperparameters, as its config.json states them."""

    architecture: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool
    tokenizer: str  # which test checkpoint in ../shared/reference/hf lends its tokenizer
    pre: str | None = None  # byte-level BPE: the pre-tokenizer to force (`llmcli convert --pre`)
    qkv_bias: bool = False
    head_dim: int | None = None
    norm_offset: float = 1.0  # norm weights' mean: 0 where the model computes (1 + w)
    experts: dict = field(default_factory=dict)  # MoE: n, per-token, expert ffn, shared ffn
    extra_layer_norms: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)  # the rest of the real config.json


SHAPES: dict[str, Shape] = {
    "llama-3.2-1b": Shape(
        "LlamaForCausalLM", "llama", 2048, 16, 32, 8, 8192, 128256, True, "llama_bf16", "llama-bpe", head_dim=64,
        config={"rope_theta": 500000.0, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"}}),
    "qwen2.5-3b": Shape(
        "Qwen2ForCausalLM", "qwen2", 2048, 36, 16, 2, 11008, 151936, True, "qwen2", "qwen2", qkv_bias=True,
        config={"rope_theta": 1000000.0, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 70}),
    "llama-2-7b": Shape(
        "LlamaForCausalLM", "llama", 4096, 32, 32, 32, 11008, 32000, False, "llama",
        config={"rope_theta": 10000.0, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}),
    "qwen2.5-7b": Shape(
        "Qwen2ForCausalLM", "qwen2", 3584, 28, 28, 4, 18944, 152064, False, "qwen2", "qwen2", qkv_bias=True,
        config={"rope_theta": 1000000.0, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 28}),
    "mistral-7b": Shape(  # v0.3: the 32768-token vocabulary, no sliding window
        "MistralForCausalLM", "mistral", 4096, 32, 32, 8, 14336, 32768, False, "mistral", head_dim=128,
        config={"rope_theta": 1000000.0, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
                "sliding_window": None}),
    "qwen1.5-moe-a2.7b": Shape(
        "Qwen2MoeForCausalLM", "qwen2_moe", 2048, 24, 16, 16, 5632, 151936, False, "qwen2", "qwen2",
        qkv_bias=True,
        experts={"n": 60, "per_token": 4, "ffn": 1408, "shared_ffn": 5632},
        config={"rope_theta": 1000000.0, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
                "decoder_sparse_step": 1, "norm_topk_prob": False, "mlp_only_layers": [],
                "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 21}),
    "gemma-2-9b": Shape(
        "Gemma2ForCausalLM", "gemma2", 3584, 42, 16, 8, 14336, 256000, True, "gemma3", head_dim=256,
        norm_offset=0.0, extra_layer_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
        config={"rope_theta": 10000.0, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
                "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0, "sliding_window": 4096, "cache_implementation": "hybrid",
                "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh"}),
}


def layer_tensors(shape: Shape) -> dict[str, tuple[int, ...]]:
    """One decoder layer's tensors (names after `model.layers.N.`) and their shapes."""
    head_dim = shape.head_dim or shape.hidden // shape.heads
    q, kv = shape.heads * head_dim, shape.kv_heads * head_dim
    tensors = {
        "input_layernorm.weight": (shape.hidden,),
        "post_attention_layernorm.weight": (shape.hidden,),
        **{f"{norm}.weight": (shape.hidden,) for norm in shape.extra_layer_norms},
        "self_attn.q_proj.weight": (q, shape.hidden),
        "self_attn.k_proj.weight": (kv, shape.hidden),
        "self_attn.v_proj.weight": (kv, shape.hidden),
        "self_attn.o_proj.weight": (shape.hidden, q),
    }
    if shape.qkv_bias:
        tensors.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                        "self_attn.v_proj.bias": (kv,)})
    if shape.experts:
        e = shape.experts
        tensors["mlp.gate.weight"] = (e["n"], shape.hidden)
        for i in range(e["n"]):
            tensors.update(mlp_tensors(f"mlp.experts.{i}.", shape.hidden, e["ffn"]))
        tensors.update(mlp_tensors("mlp.shared_expert.", shape.hidden, e["shared_ffn"]))
        tensors["mlp.shared_expert_gate.weight"] = (1, shape.hidden)
    else:
        tensors.update(mlp_tensors("mlp.", shape.hidden, shape.ffn))
    return tensors


def mlp_tensors(prefix: str, hidden: int, ffn: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}gate_proj.weight": (ffn, hidden), f"{prefix}up_proj.weight": (ffn, hidden),
            f"{prefix}down_proj.weight": (hidden, ffn)}


def model_tensors(shape: Shape, layers: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint in the order the published shards hold them."""
    tensors = {"model.embed_tokens.weight": (shape.vocab, shape.hidden)}
    per_layer = layer_tensors(shape)
    for b in range(layers):
        tensors.update({f"model.layers.{b}.{name}": dims for name, dims in per_layer.items()})
    tensors["model.norm.weight"] = (shape.hidden,)
    if not shape.tied:
        tensors["lm_head.weight"] = (shape.vocab, shape.hidden)
    return tensors


def shard(tensors: dict[str, tuple[int, ...]], limit: int = SHARD_BYTES) -> list[dict[str, tuple[int, ...]]]:
    """Split into consecutive shards of at most `limit` bf16 bytes (a larger tensor gets its own)."""
    shards: list[dict[str, tuple[int, ...]]] = [{}]
    size = 0
    for name, dims in tensors.items():
        n = 2 * int(np.prod(dims))
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][name] = dims
        size += n
    return shards


def write_bf16_safetensors(path: Path, tensors: dict[str, tuple[int, ...]], rng: np.random.Generator,
                           norm_offset: float = 1.0, progress=None) -> int:
    """A safetensors file of random bfloat16 tensors, written piece by piece (numpy has no bf16):
    N(0, 0.02), norm weights offset by `norm_offset`. Returns the data bytes written."""
    header, offset = {}, 0
    for name, dims in tensors.items():
        n = int(np.prod(dims)) * 2
        header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, dims in tensors.items():
            rows, row_elems = dims[0], int(np.prod(dims[1:]))
            step = max(1, WRITE_CHUNK_BYTES // (4 * row_elems))
            for i in range(0, rows, step):
                chunk = rng.standard_normal((min(step, rows - i), *dims[1:]), dtype=np.float32) * 0.02
                if name.endswith("norm.weight"):
                    chunk += norm_offset
                f.write((chunk.view(np.uint32) >> 16).astype(np.uint16).tobytes())
                if progress is not None:
                    progress.update(2 * chunk.size)
    tmp.replace(path)
    return offset


def write_config(d: Path, shape: Shape, layers: int) -> None:
    token_config = json.loads((REFERENCE_HF / shape.tokenizer / "config.json").read_text())
    head_dim = shape.head_dim or shape.hidden // shape.heads
    config = {
        "architectures": [shape.architecture], "model_type": shape.model_type,
        "hidden_size": shape.hidden, "intermediate_size": shape.ffn, "num_hidden_layers": layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads, "head_dim": head_dim,
        "vocab_size": shape.vocab, "tie_word_embeddings": shape.tied, "torch_dtype": "bfloat16",
        "hidden_act": "silu", "attention_bias": shape.qkv_bias,
        # the lending tokenizer's special ids: the real model's would be unused padding here
        **{k: token_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        **shape.config,
    }
    if shape.experts:
        e = shape.experts
        config.update({"num_experts": e["n"], "num_experts_per_tok": e["per_token"],
                       "moe_intermediate_size": e["ffn"], "shared_expert_intermediate_size": e["shared_ffn"]})
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def build(shape_name: str, out: Path, layers: int | None = None, seed: int = 0) -> dict:
    shape = SHAPES[shape_name]
    layers = shape.layers if layers is None else layers
    tokenizer_dir = REFERENCE_HF / shape.tokenizer
    if not tokenizer_dir.is_dir():
        raise SystemExit(f"{tokenizer_dir}: the reference checkpoints are missing (../shared/reference)")
    out.mkdir(parents=True, exist_ok=True)
    tensors = model_tensors(shape, layers)
    shards = shard(tensors)
    total = sum(2 * int(np.prod(d)) for d in tensors.values())
    rng = np.random.default_rng(seed)
    weight_map = {}
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=f"{shape_name} bf16") as progress:
        for i, part in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_bf16_safetensors(out / fname, part, rng, shape.norm_offset, progress)
            weight_map.update({name: fname for name in part})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    write_config(out, shape, layers)
    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).is_file():
            shutil.copy(tokenizer_dir / f, out / f)
    info = {"shape": shape_name, "layers": layers, "parameters": total // 2, "bytes": total,
            "shards": len(shards), "largest_tensor_elements": max(int(np.prod(d)) for d in tensors.values()),
            "seed": seed, "pre_tokenizer": shape.pre,
            "convert": f"llmcli convert {out}" + (f" --pre {shape.pre}" if shape.pre else "")}
    (out / "synthetic.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--layers", type=int, help="fewer layers than the real model (a quick look)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="print every shape's parameter count and size")
    args = ap.parse_args()
    if args.list:
        for name, shape in SHAPES.items():
            n = sum(int(np.prod(d)) for d in model_tensors(shape, shape.layers).values())
            print(f"{name:20s} {shape.architecture:22s} {n / 1e9:6.2f}B parameters  {2 * n / 2**30:6.1f} GiB bf16")
        return
    if not args.shape or not args.out:
        ap.error("--shape and --out are required (or --list)")
    t0 = time.perf_counter()
    info = build(args.shape, args.out, args.layers, args.seed)
    print(json.dumps({**info, "seconds": round(time.perf_counter() - t0, 1), "out": str(args.out)}))


if __name__ == "__main__":
    sys.exit(main())
