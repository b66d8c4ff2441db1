"""Prompt logits of the three prompt-activation modes against each other and against llama.cpp.

    python scripts/compare_prompt_activations.py [--kq-tags Q4_K_M,Q4_0,...] [--demo-tokens 200]

K-quant test model (tests/data/kq, every --kq-tags file quantized with llmcli.quantize from
kq-f16.gguf, byte-identical to llama-quantize's): the 38-token reference prompt in one batch (a
GEMM-sized chunk), logits with Transformer.set_prompt_activations "float", "int8" and "int8-gemm",
and llama.cpp's own logits for the same file: native (`<TAG>.logits.npy`, 8-bit activations) and
dequantized to F32 (`<TAG>.dequant_f32.logits.npy`). The yardstick is llama.cpp's own native vs
dequant-f32 distance: "int8-gemm" vs "float" should be of that size, "int8-gemm" vs "int8" (the
same integer sums, float additions in another order) far smaller.

Demo model: a --demo-tokens prompt of random ids (no llama.cpp logits that long here), the same
three modes against each other.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from llmcli.demo import demo_model_path
from llmcli.models import load_model
from llmcli.quantize import quantize_file
from llmcli.quants.mixes import QuantizeOptions

KQ = Path(__file__).resolve().parent.parent / "tests" / "data" / "kq"
MODES = ("float", "int8", "int8-gemm")


def mode_logits(path: Path, ids) -> dict[str, np.ndarray]:
    model = load_model(path, threads=1, ctx_size=max(256, len(ids) + 1), batch_size=max(64, len(ids)))
    out = {}
    for mode in MODES:
        model.set_prompt_activations(mode)
        out[mode] = model.logits(ids)
    return out


def distance(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(np.float64) - b)
    return f"max {d.max():.4f} mean {d.mean():.4f} argmax {100 * (a.argmax(1) == b.argmax(1)).mean():.0f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kq-tags", default="Q4_K_M,Q4_0,Q8_0,Q6_K,Q5_K-pure")
    ap.add_argument("--demo-tokens", type=int, default=200)
    args = ap.parse_args()
    ids = json.loads((KQ / "llamacpp" / "f16.json").read_text())["prompt_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        for tag in args.kq_tags.split(","):
            record = json.loads((KQ / "types" / f"{tag}.json").read_text())
            path = Path(tmp) / f"kq-{tag}.gguf"
            quantize_file(KQ / "kq-f16.gguf", path, record["type_arg"], QuantizeOptions(pure=record["pure"]),
                          measure=False)
            ours = mode_logits(path, ids)
            native = np.load(KQ / "llamacpp" / f"{tag}.logits.npy")
            dequant = np.load(KQ / "llamacpp" / f"{tag}.dequant_f32.logits.npy")
            print(f"kq {tag} ({len(ids)} tokens)")
            print(f"  llama.cpp native vs dequant-f32  {distance(native, dequant)}")
            print(f"  int8-gemm vs float               {distance(ours['int8-gemm'], ours['float'])}")
            print(f"  int8-gemm vs int8 (mat-vec)      {distance(ours['int8-gemm'], ours['int8'])}")
            print(f"  int8-gemm vs llama.cpp native    {distance(ours['int8-gemm'], native)}")
            print(f"  float vs llama.cpp dequant-f32   {distance(ours['float'], dequant)}")
    rng = np.random.default_rng(0)
    demo = demo_model_path()
    demo_ids = [2] + rng.integers(3, 100000, args.demo_tokens - 1).tolist()
    ours = mode_logits(demo, demo_ids)
    print(f"demo model ({args.demo_tokens} tokens)")
    print(f"  int8-gemm vs float               {distance(ours['int8-gemm'], ours['float'])}")
    print(f"  int8 (mat-vec) vs float          {distance(ours['int8'], ours['float'])}")
    print(f"  int8-gemm vs int8 (mat-vec)      {distance(ours['int8-gemm'], ours['int8'])}")


if __name__ == "__main__":
    main()
