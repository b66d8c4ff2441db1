"""Kernel compilation is seen as it happens: counted apart from timings, announced by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from llmcli.engine.jit import compile_seconds, on_compile_start

TINY = Path(__file__).parent / "data" / "gguf_ref" / "llama-f16.gguf"


def test_compile_clock_counts_compiles_not_calls():
    @njit(cache=False)
    def fresh(x):
        return x * 2 + 1

    started = []
    remove = on_compile_start(lambda: started.append(True))
    before = compile_seconds()
    assert fresh(np.float64(3.0)) == 7.0
    after_first = compile_seconds()
    assert started and after_first > before
    fresh(np.float64(4.0))  # compiled: no new event
    assert compile_seconds() == after_first and len(started) == 1
    remove()
    fresh(np.int64(4))  # a new signature compiles, but the callback is gone
    assert len(started) == 1 and compile_seconds() > after_first


def test_a_first_run_reports_compile_time_apart_from_the_rates(tmp_path):
    """`llmcli run` with an empty kernel cache: it says it is compiling, the JSON timings carry the
    compile time, and the rates are computed without it."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = subprocess.run([sys.executable, "-m", "llmcli", "run", "-m", str(TINY), "-p", "Once upon a time",
                          "-n", "4", "--temp", "0", "-t", "1", "--json"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr
    assert "compiling kernels" in out.stderr
    result = json.loads(out.stdout)
    t = result["timings"]
    assert t["compile_ms"] > 1000  # kernels compiled in this process, seconds of it
    assert t["prompt_n"] == len(result["prompt_tokens"]) and t["predicted_n"] == 4
    # the rates leave compilation out: ms per token far below what compiling cost
    assert t["prompt_ms"] + t["predicted_ms"] < t["compile_ms"] / 4
    # each figure is rounded on its own (ms and rate to 3 decimals): the rate agrees with the
    # rounded ms to their rounding, not always to the last digit (45.484 against 45.483 once)
    assert t["prompt_ms"] == 0 or t["prompt_per_second"] == pytest.approx(t["prompt_n"] * 1000 / t["prompt_ms"],
                                                                           rel=1e-3)
