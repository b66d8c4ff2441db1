"""Batched decoding measured as `llama-batched-bench` measures it.

For every (PP, TG, B): B sequences each get a prompt of PP random token ids (with `shared_prompt`,
one prompt evaluated once and reused by every sequence), then TG tokens are generated for each,
the B sequences decoded together one token per step. The continuous-batching scheduler runs it,
with prompts first (no decode step while a prompt is pending) so the two phases are timed apart:

    T_PP  time until every sequence has its first token        S_PP = B*PP / T_PP  (shared: PP / T_PP)
    T_TG  time for the TG decode steps                         S_TG = B*TG / T_TG
    N_KV  cache positions used: B*(PP+TG) (every sequence keeps its own copy, shared prompt or not,
          as llama.cpp's default non-unified cache)            S    = (B*PP or PP, + B*TG) / (T_PP + T_TG)

Differences from llama-batched-bench: greedy sampling of every row is in the timings (it is part
of serving a batch), and with a shared prompt the other sequences' copies of it (and their first
tokens) are in T_PP, where llama.cpp copies the cache untimed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..generation import Request, SamplingParams, Scheduler
from ..generation.sequence import State


@dataclass
class BatchedResult:
    pp: int
    tg: int
    pl: int
    n_kv: int
    t_pp: float
    t_tg: float
    is_pp_shared: bool
    n_threads: int
    n_batch: int
    n_kv_max: int

    @property
    def speed_pp(self) -> float:
        tokens = self.pp if self.is_pp_shared else self.pl * self.pp
        return tokens / self.t_pp if self.t_pp > 0 else 0.0

    @property
    def speed_tg(self) -> float:
        return self.pl * self.tg / self.t_tg if self.t_tg > 0 else 0.0

    @property
    def t(self) -> float:
        return self.t_pp + self.t_tg

    @property
    def speed(self) -> float:
        tokens = (self.pp if self.is_pp_shared else self.pl * self.pp) + self.pl * self.tg
        return tokens / self.t if self.t > 0 else 0.0

    def to_dict(self) -> dict:
        """llama-batched-bench's jsonl fields."""
        return {"n_kv_max": self.n_kv_max, "n_batch": self.n_batch, "n_ubatch": self.n_batch,
                "is_pp_shared": int(self.is_pp_shared), "n_threads": self.n_threads,
                "n_threads_batch": self.n_threads, "pp": self.pp, "tg": self.tg, "pl": self.pl,
                "n_kv": self.n_kv, "t_pp": round(self.t_pp, 6), "speed_pp": round(self.speed_pp, 6),
                "t_tg": round(self.t_tg, 6), "speed_tg": round(self.speed_tg, 6), "t": round(self.t, 6),
                "speed": round(self.speed, 6)}


def run_batched(model, pp: int, tg: int, pl: int, shared_prompt: bool, rng: np.random.Generator) -> BatchedResult:
    """One llama-batched-bench row on a loaded model (its context must hold PP + TG)."""
    sched = Scheduler(model, n_parallel=pl, prompt_first=True)
    greedy = SamplingParams(temp=0.0)
    n_vocab = model.hp.n_vocab

    def request(prompt):
        # the first token comes from the prompt's logits; TG more are decoded after it
        return Request(prompt, max_tokens=tg + 1, params=greedy, stop_ids=frozenset(), cache_prompt=shared_prompt)

    shared = rng.integers(0, n_vocab, pp).tolist()
    prompts = [shared if shared_prompt else rng.integers(0, n_vocab, pp).tolist() for _ in range(pl)]
    start = time.perf_counter()
    if shared_prompt:  # evaluate it once, then every other sequence copies its cached keys/values
        first = sched.submit(request(prompts[0]))
        while first.state is not State.DECODING:
            sched.step()
        for prompt in prompts[1:]:
            sched.submit(request(prompt))
        seqs = [first] + list(sched.waiting)
    else:
        seqs = [sched.submit(request(p)) for p in prompts]
    while any(s.state in (State.WAITING, State.PROMPT) for s in seqs):
        sched.step()
    t_pp = time.perf_counter() - start
    start = time.perf_counter()
    sched.run_all()
    t_tg = time.perf_counter() - start
    n_kv = pl * (pp + tg)
    return BatchedResult(pp, tg, pl, n_kv, t_pp, t_tg, shared_prompt, model.threads, model.batch_size,
                         model.n_ctx * pl)
