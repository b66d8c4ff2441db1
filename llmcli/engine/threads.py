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
   GEMM batch), runs each layer at the faster count, and now and then runs the other
   count to re-check (after 4 layers at first, backing off to every 512 while the choice holds;
   a re-check runs 4 consecutive layers and is judged on their mean).
   Results do not depend on the count: every kernel gives the same bits at any thread count.

3. **The cost of measuring.** Under one busy core the two counts are close (1 thread gets a core
   of its own; 2 threads get 4/3 of a core between them but each region waits for the slower),
   so the re-checks decided the figure, and they cost more than they seemed: after layers at 1
   thread the worker sleeps, so a layer at 2 threads starts by waking it and often waits a time
   slice for it (measured with the machine's other cores running niced jobs: 2.6-5 ms a layer at
   2 threads against 0.8 ms at 1). A single such layer is noise at that scale: a lucky one won
   the comparison, switched, and every switch restarted re-checks every 4 layers: ~1 layer in
   25 ran at the losing count. The default measured 0.90x (generation) and 0.94x (prompts) of
   `-t 1` under one busy core. Two changes:
   - A re-check that cannot pay is not made: `FreeCores` reads the machine's CPU time counters
     (every process's, less our own, ~15 us every 0.25 s) and `AutoThreads` uses at most the
     cores the others leave free. With one core of two busy that is 1, and the default runs
     `-t 1`'s kernels with no re-check. Niced processes are not load for a process at nice 0
     (they yield at once): on a machine whose other jobs run niced, the default still measures.
   - A re-check runs 4 consecutive layers and is judged on their mean, a switch halves the
     interval to the next re-check instead of restarting it, and the interval grows 4x (to 512
     layers) while the choice holds.

4. **An idle machine needs no re-check.** With nothing else running, every free core helps (demo
   model, 2 cores: prompts ~1.4x, generation ~1.2x of 1 thread), yet the re-checks cost the default
   10-15 % there: a 1-thread re-check of 4 layers is a visible share of a short prompt's 18, and
   2-thread layers have a tail (a worker woken late) that let a 1-thread re-check win by the margin
   now and then, after which generation stayed at 1 thread for hundreds of layers (measured: 1131
   of a run's 1152 layers, 83 t/s against 103 at `-t 2`). So while the others' load stays under
   `FreeCores.IDLE` of a core, every layer runs at the free cores, nothing is timed, and measuring
   starts afresh when load appears. A load the counters cannot see (niced processes when we are not
   niced) costs 2 threads little: they yield to us.
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


class FreeCores:
    """Cores the rest of the machine leaves us, from the system's CPU time counters.

    Over each `WINDOW`, the CPU time all processes spent (the OS's machine-wide counters: user,
    system, interrupts, and time the hypervisor gave other guests), less this process's own, is
    the others' load; `n_cpus` minus it is what is free. Time of niced processes is not load when
    we run at nice 0: they give the CPU up as soon as we want it (when we run niced, it counts).
    `cores` moves down as soon as the free cores round to fewer, and up only with a clear margin
    (`RISE`), so a load near the middle does not flip it. Reading the counters costs ~15 us, once
    per window at most. The first estimate comes after `FIRST_WINDOW` (it covers the model's
    loading): a short command (a 128-token prompt takes ~0.1 s) would otherwise run its whole
    first window at every core as if the machine were idle, 2 threads against a busy core.
    Until then the machine does not count as idle.
    """

    WINDOW = 0.25  # seconds of counters behind each estimate
    FIRST_WINDOW = 0.05  # seconds behind the first one (the counters tick every 10 ms)
    RISE = 0.75  # free cores above the current count needed to count one more
    IDLE = 0.25  # the others' load, in cores, under which the machine counts as idle
    CONTENDING = ("user", "system", "irq", "softirq", "steal")

    def __init__(self, read=None, clock=None, own_cpu=None, n_cpus: int | None = None):
        import time

        import psutil

        fields = self.CONTENDING + (("nice",) if _niceness() > 0 else ())
        self.n_cpus = n_cpus or psutil.cpu_count() or 1
        self._read = read or (lambda: sum(getattr(psutil.cpu_times(), f, 0.0) for f in fields))
        self._clock = clock or time.monotonic
        self._own_cpu = own_cpu or time.process_time
        self.free = float(self.n_cpus)
        self.cores = self.n_cpus
        self.measured = False
        self._since = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        return self._clock(), self._read(), self._own_cpu()

    def cap(self, n_max: int) -> int:
        """Threads worth using, at most n_max (at least 1), from the last full window."""
        if self._clock() - self._since[0] >= (self.WINDOW if self.measured else self.FIRST_WINDOW):
            self.measured = True
            sample = self._sample()
            wall, busy, own = (a - b for a, b in zip(sample, self._since))
            self._since = sample
            self.free = max(0.0, self.n_cpus - max(0.0, busy - own) / wall)
            rounded = int(self.free + 0.5)
            if rounded < self.cores or self.free >= self.cores + self.RISE:
                self.cores = rounded
        return max(1, min(n_max, self.cores))

    @property
    def idle(self) -> bool:
        """Whether the others left every core free in the last window (as of the last `cap`)."""
        return self.measured and self.n_cpus - self.free < self.IDLE


def _niceness() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):  # no getpriority (Windows)
        return 0


class _Kind:
    __slots__ = ("choice", "cost", "seen", "countdown", "interval", "probe")

    def __init__(self, n: int):
        self.choice = n
        self.cost: dict[int, float] = {}  # thread count -> smoothed seconds per token and layer
        self.seen: dict[int, int] = {}  # thread count -> samples taken (the first is not used)
        self.countdown = AutoThreads.FIRST_PROBE
        self.interval = AutoThreads.FIRST_PROBE
        self.probe: list[float] = []  # per-token times of the re-check under way (consecutive layers)


class AutoThreads:
    """Chooses, layer by layer, between the free cores (at most `n_max`) and 1 thread from measured
    time per token.

        auto = AutoThreads(2)
        n = auto.begin(kind)            # thread count for this layer (set in numba's pool)
        ... run the layer ...
        auto.end(kind, n, seconds, n_tokens)
    """

    FIRST_PROBE = 4  # layers before the first re-check, and after every switch
    MAX_INTERVAL = 512  # layers between re-checks while the choice keeps winning
    BACKOFF = 4  # the interval's growth after each re-check the choice wins
    PROBE_LAYERS = 4  # consecutive layers a re-check runs: one layer is noise at a time slice's scale
    SMOOTHING = 0.3  # weight of a new layer's time in the chosen count's running estimate
    MARGIN = 0.05  # the other count must be this much faster to take over

    def __init__(self, n_max: int, free_cores: FreeCores | None = None):
        self.n_max = max(1, int(n_max))
        self.free_cores = free_cores if free_cores is not None or self.n_max == 1 else FreeCores()
        self.top = self.n_max  # the most threads worth using now (the free cores, at most n_max)
        self.idle = False  # nothing else runs: `top` threads, no re-checks (docstring, point 4)
        self.kinds: dict[object, _Kind] = {}

    def _state(self, kind) -> _Kind:
        st = self.kinds.get(kind)
        if st is None:
            st = self.kinds[kind] = _Kind(self.top)
        return st

    def _other(self, n: int) -> int:
        return 1 if n != 1 else self.top

    def _update_top(self) -> None:
        if self.free_cores is None:
            return
        top = self.free_cores.cap(self.n_max)
        idle = self.free_cores.idle
        if top != self.top or idle != self.idle:  # the machine's load changed: measure afresh
            self.top, self.idle = top, idle
            self.kinds.clear()

    def steady(self, kind) -> int:
        """Set the count chosen for `kind` (no re-check) for work outside the layers."""
        n = min(self._state(kind).choice, self.top)
        _set_numba_threads(n)
        return n

    def begin(self, kind) -> int:
        """Thread count for the next layer of `kind`, set in numba's pool for this thread."""
        self._update_top()
        st = self._state(kind)
        n = st.choice
        if self.idle:
            n = self.top
        elif self.top > 1:
            st.countdown -= 1
            if st.countdown <= 0:
                n = self._other(n)
        _set_numba_threads(n)
        return n

    def end(self, kind, n: int, seconds: float, n_tokens: int) -> None:
        """Record a layer of `kind` that ran `n_tokens` rows at `n` threads in `seconds`."""
        if self.top == 1 or self.idle or n_tokens <= 0 or n not in (1, self.top):
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
        if probe:
            st.probe.append(cost)
            if len(st.probe) < self.PROBE_LAYERS:
                st.countdown = 1  # the re-check goes on with the next layer
                return
            # The re-check's layers together, as they are: the count's estimate is old by then
            # (the load may have changed).
            st.cost[n] = sum(st.probe) / len(st.probe)
            st.probe.clear()
        else:  # the chosen count's layers come one after another: smooth them
            old = st.cost.get(n)
            st.cost[n] = cost if old is None else old + self.SMOOTHING * (cost - old)
        other = self._other(st.choice)
        if other in st.cost and st.cost[other] < st.cost[st.choice] * (1.0 - self.MARGIN):
            # switch; re-check the loser sooner, but not so soon that noise flips it back
            st.choice = other
            st.interval = max(self.FIRST_PROBE, st.interval // 2)
            st.countdown = st.interval
        elif probe:
            st.interval = min(self.BACKOFF * st.interval, self.MAX_INTERVAL)
            st.countdown = st.interval


def _set_numba_threads(n: int) -> None:
    import numba

    if numba.get_num_threads() != n:
        numba.set_num_threads(n)

