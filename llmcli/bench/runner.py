"""Time prompt processing and generation on the engine, as llama-bench does.

Per test: load the model (once per model/threads/batch/context), optionally warm up, then `repetitions`
times on a fresh sequence (or, with a depth, one holding that many tokens already): process `n_prompt` synthetic token ids in batches (logits of the last
position only), then generate `n_gen` tokens one at a time, greedily - through the generation
layer's scheduler, the loop `run` and the server use. Tokenization is not timed: ids are random, like
llama-bench's. The first-ever call of each kernel pays numba's compilation; it is measured apart
(`compile_s`) and excluded from the samples.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..engine.prompt_activations import DEFAULT_PROMPT_ACTIVATIONS
from ..engine.threads import threading_layer
from ..generation import Request, SamplingParams, Scheduler
from ..gguf.constants import FILE_TYPE_DESCRIPTIONS, FileType
from ..models import load_model
from .results import BenchResult, ModelInfo
from .spec import BenchTest
from .system import environment


def describe_model(model) -> ModelInfo:
    reader = model.reader
    arch = reader.architecture or "unknown"
    n_params = sum(t.n_elements for t in reader.tensors)
    size = sum(t.n_bytes for t in reader.tensors)
    ftype = reader.get("general.file_type")
    try:
        ftype_enum = FileType(ftype)
        ftype_name, ftype_desc = ftype_enum.name, FILE_TYPE_DESCRIPTIONS.get(ftype_enum, ftype_enum.name)
    except (ValueError, TypeError):
        ftype_name = ftype_desc = "unknown"
    label = reader.get("general.size_label") or (f"{n_params / 1e9:.1f}B" if n_params >= 1e9
                                                  else f"{n_params / 1e6:.0f}M")
    mix = Counter(t.type.name for t in reader.tensors)
    return ModelInfo(Path(reader.path).name, arch, f"{arch} {label} {ftype_desc}", size, n_params,
                     ftype_name, dict(sorted(mix.items())))


@dataclass
class _Loaded:
    key: tuple
    model: object


class BenchRunner:
    """Runs tests, reusing a loaded model while model, threads, batch size and context stay the same."""

    def __init__(self, repetitions: int, warmup: bool, seed: int = 1234,
                 progress: Callable[[str], None] | None = None,
                 prompt_activations: str = DEFAULT_PROMPT_ACTIVATIONS):
        self.repetitions = repetitions
        self.prompt_activations = prompt_activations  # Transformer.set_prompt_activations
        self.warmup = warmup
        self.rng = np.random.default_rng(seed)
        self.progress = progress or (lambda message: None)
        self._loaded: _Loaded | None = None
        self._compiled: set[tuple] = set()
        self._context = None  # (key, scheduler, slot, ids) of the last depth evaluated (`_depth`)

    def _model(self, test: BenchTest):
        key = (test.model, test.n_threads, test.auto_threads, test.n_batch, test.n_ctx, test.type_k, test.type_v)
        if self._loaded is None or self._loaded.key != key:
            self._loaded = self._context = None  # release the previous model's buffers first
            model = load_model(test.model, threads=None if test.auto_threads else test.n_threads,
                               ctx_size=test.n_ctx, cache_type_k=test.type_k, cache_type_v=test.type_v,
                               batch_size=test.n_batch, prompt_activations=self.prompt_activations)
            self._loaded = _Loaded(key, model)
        return self._loaded.model

    @staticmethod
    def peak_rss() -> int:
        return peak_rss()

    def _random_ids(self, model, n: int) -> np.ndarray:
        return self.rng.integers(0, model.hp.n_vocab, size=n, dtype=np.int64)

    def _depth(self, model, test: BenchTest) -> tuple[Scheduler, list[int]]:
        """A scheduler whose one free slot holds a context of test.n_depth random tokens, and those
        tokens. As llama-bench's -d: the context is evaluated once per test (in batches, untimed)
        and each repetition starts from a copy of it, in a slot of the same cache kept out of the
        scheduler's reach."""
        if self._context is None or self._context[0] != (id(model), test.n_depth):
            sched = Scheduler(model, n_parallel=2)
            kept = sched.free.pop()
            ids = self._random_ids(model, test.n_depth)
            model.forward(kept, ids, 0)
            self._context = ((id(model), test.n_depth), sched, kept, ids.tolist())
        _, sched, kept, ids = self._context
        sched.free[0].copy_from(kept)
        return sched, ids

    def _run_once(self, model, test: BenchTest) -> int:
        """One timed repetition; returns nanoseconds. Forwards: the prompt's batches, then n_gen
        single tokens (a tg test starts from one random token, as llama-bench's), after a context
        of n_depth tokens (`_depth`) that the prompt continues."""
        if test.n_prompt:
            prompt = self._random_ids(model, test.n_prompt).tolist()
            max_tokens = test.n_gen + 1 if test.n_gen else 0  # the first comes from the prompt's logits
        else:
            prompt, max_tokens = self._random_ids(model, 1).tolist(), test.n_gen
        if test.n_depth:
            sched, context = self._depth(model, test)
        else:
            sched, context = Scheduler(model), []
        seq = sched.new_sequence(Request(context + prompt, max_tokens=max_tokens, params=SamplingParams(temp=0.0),
                                         stop_ids=frozenset(), cache_prompt=bool(context)))
        start = time.perf_counter_ns()
        sched.submit(seq)
        sched.run_until(seq)
        return time.perf_counter_ns() - start

    def _compile(self, model, test: BenchTest) -> float:
        """Run each code path once so numba compiles (or loads its cache) outside the timings."""
        kinds = ("prompt" if test.n_prompt else None, "gen" if test.n_gen else None)
        key = (test.model, test.n_threads, test.auto_threads) + kinds
        if key in self._compiled:
            return 0.0
        start = time.perf_counter()
        seq = model.new_sequence()
        if test.n_prompt:
            model.forward(seq, self._random_ids(model, min(test.n_prompt, 8)))
        if test.n_gen:
            model.forward(seq, self._random_ids(model, 1))
        self._compiled.add(key)
        return time.perf_counter() - start

    def run(self, tests: list[BenchTest]) -> Iterator[BenchResult]:
        env = environment()
        for i, test in enumerate(tests, 1):
            self.progress(f"[{i}/{len(tests)}] {Path(test.model).name} {test.name} "
                          f"threads={test.n_threads}{' (auto)' if test.auto_threads else ''} batch={test.n_batch}")
            model = self._model(test)
            compile_s = self._compile(model, test)
            if self.warmup:
                self._run_once(model, test)
            samples = [self._run_once(model, test) for _ in range(self.repetitions)]
            yield BenchResult(
                test=test,
                model=describe_model(model),
                samples_ns=samples,
                test_time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                peak_rss_bytes=self.peak_rss(),
                kv_cache=model.kv_memory(),
                compile_s=compile_s,
                warmup=self.warmup,
                environment=env,
                threading_layer=threading_layer(),
                prompt_activations=self.prompt_activations,
            )


def peak_rss() -> int:
    """The process's peak resident set so far, in bytes (Linux: VmHWM; Windows: psutil's peak
    working set; macOS: ru_maxrss, which it reports in bytes)."""
    import psutil

    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):
        return int(info.peak_wset)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # POSIX only, hence imported here

    scale = 1 if sys.platform == "darwin" else 1024
    return max(int(info.rss), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)
