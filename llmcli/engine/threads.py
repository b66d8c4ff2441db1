"""Threads on a busy machine: the thread pool's wait policy, and a thread count that follows
measured progress.

Every parallel kernel is a numba `prange` region: the calling thread and the pool's workers split
the rows, and the region ends when every thread has finished its share. A forward pass enters
~130 such regions per generated token. When another process keeps a core busy, a worker is often
descheduled, and each region waits for it. Measured on a 2-vCPU machine with one busy core (demo
model, tokens/s): 2 threads generated at ~3 t/s where 1 thread gave ~17, prompts ran at ~9 t/s
against ~40-70. Two things made that collapse:

1. **The wait policy.** numba's `omp` layer is libgomp, whose idle threads spin ~300000 times
   (~14 ms here) before they sleep. The thread that finished its share spins on the CPU that the
   late worker (or the other process) needs, for longer than a scheduler time slice. `WAIT_SPINS`
   keeps a short spin (about 0.1 ms: enough to cover the gap between two regions of one token on
   an idle machine) and then sleeps. With it, 2 threads under the same load ran at 15-20 t/s
   (numba's `workqueue` layer ~15, `tbb` ~9-18, no better than this and `tbb` a 20 MB dependency).
   libgomp reads its environment once, when it is loaded (at the first parallel kernel), so
   `configure_wait_policy` runs at import of `llmcli.engine`, and never overrides a user's
   `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`.

2. **The thread count.** Even without the spin, a region split across 2 threads waits for the
   slower one, and under load 1 thread (which runs serial kernels, no region at all) is often the
   faster. No fixed count is right on a machine whose load changes, so by default (no `-t`) the
   engine measures: `AutoThreads` times every transformer layer, keeps an estimate of the time per
   token at the full thread count and at 1 thread (per kind of step: one token, a small batch, a
   GEMM batch), runs each layer at the faster count, and now and then runs one layer at the other
   count to re-check (after 4 layers at first, backing off to every 256 while the choice holds).
   Results do not depend on the count: every kernel gives the same bits at any thread count.
"""

from __future__ import annotations

import os

# libgomp spin iterations before a waiting thread sleeps: ~60 ns each on these machines, so about
# 0.1 ms (its default, 300000, spun ~14 ms).
WAIT_SPINS = 2000


def configure_wait_policy() -> None:
    """Ask libgomp (numba's `omp` threading layer) to spin briefly, then sleep, unless the user
    chose a wait policy. Only effective before the first parallel kernel runs."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(WAIT_SPINS)


def threading_layer() -> str:
    """numba's threading layer in use ("omp", "tbb", "workqueue"), with the wait policy for omp;
    "" before the first parallel kernel has run (numba picks the layer then)."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:
        return ""
    if layer == "omp":
        policy = os.environ.get("OMP_WAIT_POLICY")
        spins = os.environ.get("GOMP_SPINCOUNT")
        if policy:
            layer += f" (OMP_WAIT_POLICY={policy})"
        elif spins:
            layer += f" (GOMP_SPINCOUNT={spins})"
    return layer


class _Kind:
    __slots__ = ("choice", "cost", "seen", "countdown", "interval")

    def __init__(self, n_max: int):
        self.choice = n_max
        self.cost: dict[int, float] = {}  # thread count -> smoothed seconds per token and layer
        self.seen: dict[int, int] = {}  # thread count -> samples taken (the first is not used)
        self.countdown = AutoThreads.FIRST_PROBE
        self.interval = AutoThreads.FIRST_PROBE


class AutoThreads:
    """Chooses, layer by layer, between `n_max` threads and 1 from measured time per token.

        auto = AutoThreads(2)
        n = auto.begin(kind)            # thread count for this layer (set in numba's pool)
        ... run the layer ...
        auto.end(kind, n, seconds, n_tokens)
    """

    FIRST_PROBE = 4  # layers before the first re-check, and after every switch
    MAX_INTERVAL = 256  # layers between re-checks while the choice keeps winning
    SMOOTHING = 0.3  # weight of a new layer's time in the chosen count's running estimate
    MARGIN = 0.05  # the other count must be this much faster to take over

    def __init__(self, n_max: int):
        self.n_max = max(1, int(n_max))
        self.kinds: dict[object, _Kind] = {}

    def _state(self, kind) -> _Kind:
        st = self.kinds.get(kind)
        if st is None:
            st = self.kinds[kind] = _Kind(self.n_max)
        return st

    def _other(self, n: int) -> int:
        return 1 if n != 1 else self.n_max

    def steady(self, kind) -> int:
        """Set the count chosen for `kind` (no re-check) for work outside the layers."""
        n = self._state(kind).choice
        _set_numba_threads(n)
        return n

    def begin(self, kind) -> int:
        """Thread count for the next layer of `kind`, set in numba's pool for this thread."""
        st = self._state(kind)
        n = st.choice
        if self.n_max > 1:
            st.countdown -= 1
            if st.countdown <= 0:
                n = self._other(n)
        _set_numba_threads(n)
        return n

    def end(self, kind, n: int, seconds: float, n_tokens: int) -> None:
        """Record a layer of `kind` that ran `n_tokens` rows at `n` threads in `seconds`."""
        if self.n_max == 1 or n_tokens <= 0:
            return
        st = self._state(kind)
        seen = st.seen.get(n, 0)
        st.seen[n] = seen + 1
        probe = n != st.choice
        if probe:  # the next re-check, whatever this one says
            st.countdown = st.interval
        if seen == 0:  # a count's first layer may load kernels from numba's cache: not a sample
            if probe:
                st.countdown = 1
            return
        cost = seconds / n_tokens
        old = st.cost.get(n)
        # The chosen count's layers come one after another: smooth them. A re-check stands alone
        # and its count's estimate is old by then (the load may have changed): take it as it is.
        st.cost[n] = cost if old is None or probe else old + self.SMOOTHING * (cost - old)
        other = self._other(st.choice)
        if other in st.cost and st.cost[other] < st.cost[st.choice] * (1.0 - self.MARGIN):
            st.choice = other  # switch, and re-check the loser soon
            st.countdown = st.interval = self.FIRST_PROBE
        elif probe:
            st.interval = min(2 * st.interval, self.MAX_INTERVAL)
            st.countdown = st.interval


def _set_numba_threads(n: int) -> None:
    import numba

    if numba.get_num_threads() != n:
        numba.set_num_threads(n)

