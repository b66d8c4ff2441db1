"""Prompt logits of the three prompt-activation modes against each other and against llama.cpp.

    python scripts/compare_prompt_activations.py [--kq-tags Q4_K_M,Q4_0,...] [--demo-tokens 200]

The default mode (engine/prompt_activations.py, "int8-gemm") is checked per kq file against
llama.cpp's native logits with llama.cpp's own native-vs-dequant-f32 distance as the bound
(tests/test_models_kq.py holds the same; weight types without an integer GEMM run float32 there).

K-quant test model (tests/data/kq, every --kq-tags file quantized with llmcli.quantize from
kq-f16.gguf, byte-identical to llama-quantize's): the 38-token reference prompt in one batch (a
GEMM-sized chunk), logits with Transformer.set_prompt_activations "float", "int8" and "int8-gemm",
and llama.cpp's own logits for the same file: native (`<TAG>.logits.npy`, 8-bit activations) and
dequantized to F32 (`<TAG>.dequant_f32.logits.npy`). The yardstick is llama.cpp's own native vs
dequant-f32 distance: "int8-gemm" vs "float" should be of that size, "int8-gemm" vs "int8" (the
same integer sums, float additions in another order) far smaller.

Demo model: llama.cpp's logits in tests/data/demo/llamacpp.json (per reference prompt, the chosen
token's logit at each of its 32 greedy steps and the top 20 at the last prompt position), against each
mode's logits for the prompt plus those 32 tokens in one batch (teacher-forced, GEMM-sized); then a
--demo-tokens prompt of random ids, the modes against each other. (llama.cpp's own native-vs-
dequantized distance on the demo model is measured as a KL divergence: `llama-perplexity
--kl-divergence` of a dequantized-F32 copy against the native file's base, see the README.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from llmcli.demo import demo_model_path
from llmcli.engine.prompt_activations import DEFAULT_PROMPT_ACTIVATIONS, PROMPT_ACTIVATIONS
from llmcli.models import load_model
from llmcli.quantize import quantize_file
from llmcli.quants.mixes import QuantizeOptions

KQ = Path(__file__).resolve().parent.parent / "tests" / "data" / "kq"
MODES = PROMPT_ACTIVATIONS


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
    ap.add_argument("--kq-tags", default="Q4_0,Q5_1,Q8_0,Q4_K_M,Q6_K,Q2_K-pure,Q3_K-pure,Q4_K-pure,Q5_K-pure")
    ap.add_argument("--demo-tokens", type=int, default=200)
    args = ap.parse_args()
    ids = json.loads((KQ / "llamacpp" / "f16.json").read_text())["prompt_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        for tag in filter(None, args.kq_tags.split(",")):
            record = json.loads((KQ / "types" / f"{tag}.json").read_text())
            path = Path(tmp) / f"kq-{tag}.gguf"
            quantize_file(KQ / "kq-f16.gguf", path, record["type_arg"], QuantizeOptions(pure=record["pure"]),
                          measure=False)
            ours = mode_logits(path, ids)
            native = np.load(KQ / "llamacpp" / f"{tag}.logits.npy")
            dequant = np.load(KQ / "llamacpp" / f"{tag}.dequant_f32.logits.npy")
            print(f"kq {tag} ({len(ids)} tokens)")
            print(f"  llama.cpp native vs dequant-f32  {distance(native, dequant)}")
            print(f"  default ({DEFAULT_PROMPT_ACTIVATIONS}) vs native   {distance(ours[DEFAULT_PROMPT_ACTIVATIONS], native)}")
            print(f"  float vs llama.cpp native        {distance(ours['float'], native)}")
            print(f"  int8-gemm vs float               {distance(ours['int8-gemm'], ours['float'])}")
            print(f"  int8-gemm vs int8 (mat-vec)      {distance(ours['int8-gemm'], ours['int8'])}")
            print(f"  float vs llama.cpp dequant-f32   {distance(ours['float'], dequant)}")
    demo = demo_model_path()
    demo_ref = json.loads((KQ.parent / "demo" / "llamacpp.json").read_text())
    diffs = {mode: [] for mode in MODES}
    for case in demo_ref["prompts"]:
        prompt = case["prompt_ids"]
        ours = mode_logits(demo, prompt + case["greedy_new_ids"])
        for mode, logits in ours.items():
            diffs[mode] += [abs(float(logits[len(prompt) - 1 + i][step["id"]]) - step["logit"])
                            for i, step in enumerate(case["greedy_steps"])]
            diffs[mode] += [abs(float(logits[len(prompt) - 1][tid]) - value) for tid, value in case["last_position_top20"]]
    print(f"demo model vs llama.cpp native ({len(diffs[MODES[0]])} logits: teacher-forced chosen tokens + last-prompt top 20)")
    for mode in MODES:
        d = np.array(diffs[mode])
        print(f"  {mode:<10} max {d.max():.4f} mean {d.mean():.4f}")
    rng = np.random.default_rng(0)
    demo_ids = [2] + rng.integers(3, 100000, args.demo_tokens - 1).tolist()
    ours = mode_logits(demo, demo_ids)
    print(f"demo model ({args.demo_tokens} tokens)")
    print(f"  int8-gemm vs float               {distance(ours['int8-gemm'], ours['float'])}")
    print(f"  int8 (mat-vec) vs float          {distance(ours['int8'], ours['float'])}")
    print(f"  int8-gemm vs int8 (mat-vec)      {distance(ours['int8-gemm'], ours['int8'])}")


if __name__ == "__main__":
    main()
