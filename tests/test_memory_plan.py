"""Memory planning: what a model needs before it is loaded, and a one-line stop when it does not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmcli.convert.pipeline import convert
from llmcli.demo import demo_model_path
from llmcli.gguf.reader import GGUFReader
from llmcli.models import load_model
from llmcli.models.memory import MEMORY_CHECK_ENV, InsufficientMemoryError, check
from llmcli.models.transformer import plan_memory

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

# Tiny models of every cache shape: plain, sliding-window layers (gemma3), experts and a shared
# expert (qwen2moe), a fused FFN (phi3), biases and GQA (qwen2). name -> --pre for convert.
MODELS = {"gemma3": None, "qwen2moe": "qwen2", "phi3": None, "qwen2": "qwen2", "llama": None}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_plan")
    return {name: convert(DATA / "hf" / name, out / f"{name}.gguf", outtype="f16", pre=pre)
            and out / f"{name}.gguf" for name, pre in MODELS.items()}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("ctx, n_seq, batch", [(64, 1, 512), (300, 3, 16)])
def test_plan_counts_what_the_model_allocates(tiny, name, ctx, n_seq, batch):
    path = tiny[name]
    with GGUFReader(path) as reader:
        plan = plan_memory(reader, ctx, n_seq, batch)
    model = load_model(path, threads=1, ctx_size=ctx, batch_size=batch, n_seq=n_seq)
    try:
        assert plan.kv == model.new_cache(n_seq).n_bytes
        assert plan.kv_per_sequence == model.kv_bytes_per_sequence()
        work = sum(a.nbytes for a in model._flat.values())
        logits = 4 * n_seq * model.hp.n_vocab
        assert work + logits < plan.buffers <= work + logits + (2 << 20)
        assert plan.weights + plan.output_copy == sum(t.n_bytes for t in model.reader.tensors)
    finally:
        model.reader.close()


def test_demo_plan_copies_the_output_matrix():
    with GGUFReader(demo_model_path()) as reader:
        plan = plan_memory(reader, None, 2)
        output = reader.tensor("token_embd.weight").n_bytes  # tied: the output matrix
        total = sum(t.n_bytes for t in reader.tensors)
    assert plan.n_ctx == 4096 and plan.n_seq == 2
    assert plan.output_copy == output and plan.weights == total - output
    assert plan.total == plan.weights + plan.output_copy + plan.kv + plan.buffers + plan.tokenizer + plan.runtime


def test_check_stops_with_figures_and_a_context_that_fits():
    with GGUFReader(demo_model_path()) as reader:
        plan = plan_memory(reader, 32768, 4)
        available = plan.total - plan.kv + plan.kv // 5
        with pytest.raises(InsufficientMemoryError) as e:
            check(plan, reader.path, available=available)
        message = str(e.value)
        assert "\n" not in message and str(reader.path) in message
        assert "4 x 32768 positions" in message and "is available" in message
        suggested = int(message.split("--ctx-size ")[1].split()[0])
        assert 256 <= suggested < 32768
        assert plan_memory(reader, suggested, 4).total <= available < plan_memory(reader, suggested + 256, 4).total
        check(plan, reader.path, available=plan.total)  # exactly enough: no error


def test_check_suggests_a_smaller_file_when_no_context_fits():
    with GGUFReader(demo_model_path()) as reader:
        plan = plan_memory(reader, 512, 1)
        with pytest.raises(InsufficientMemoryError, match="a quantization whose file is under"):
            check(plan, reader.path, available=plan.total - plan.weights)


def test_run_refuses_a_context_that_does_not_fit(cli):
    model = DATA / "gguf_ref" / "llama-f16.gguf"
    res = cli("run", "-m", str(model), "-p", "hi", "-n", "1", "-c", "400000000")
    assert res.exit_code == 1
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(model) in lines[0] and "is available" in lines[0], res.stderr
    assert MEMORY_CHECK_ENV in lines[0]


def test_inspect_prints_the_estimate(cli):
    res = cli("inspect", str(demo_model_path()), "-c", "1024", "-np", "2", "--json")
    assert res.exit_code == 0, res.stderr
    mem = json.loads(res.stdout)["memory"]
    with GGUFReader(demo_model_path()) as reader:
        assert mem["total"] == plan_memory(reader, 1024, 2).total
    assert mem["n_ctx"] == 1024 and mem["n_seq"] == 2 and mem["available"] > 0


PEAK_PROBE = """
import json, sys
import numpy as np
import llmcli
from llmcli.gguf.reader import GGUFReader
from llmcli.models.transformer import plan_memory

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

path, ctx, n_seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = status("VmRSS")
with GGUFReader(path) as reader:
    plan = plan_memory(reader, ctx, n_seq)
llm = llmcli.load(path, threads=1, ctx_size=ctx, parallel=n_seq)
rng = np.random.default_rng(0)
vocab = llm.model.hp.n_vocab
# every sequence's context filled: the whole KV cache is committed
prompts = [rng.integers(100, vocab - 100, ctx - 8).tolist() for _ in range(n_seq)]
llm.complete_many(prompts, max_tokens=4)
print(json.dumps({"estimate": before + plan.total, "peak": status("VmHWM")}))
"""


def test_estimate_is_within_ten_percent_of_the_measured_peak():
    """A fresh process loads the demo model and fills two sequences' contexts; its peak RSS is
    what it had before loading plus the plan's total, within 10 %."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(2):  # the first run may compile kernels (LLVM's memory is not the model's): measure the second
        out = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(demo_model_path()), "1024", "2"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(figures["estimate"] - figures["peak"]) <= 0.10 * figures["peak"], figures
