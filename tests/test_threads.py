"""The default thread count follows measured speed (engine/threads.py)."""

import numba

from llmcli.engine.threads import AutoThreads, FreeCores, threading_layer


class _Machine:
    """Fake CPU time counters of a 2-CPU machine: `others` cores busy with other processes, `own`
    cores with ours; every reading advances the clock by `step` seconds."""

    def __init__(self, others=0.0, own=1.0, step=0.1):
        self.others, self.own, self.step = others, own, step
        self.now = self.busy = self.own_cpu = 0.0

    def clock(self):
        self.now += self.step
        self.busy += self.step * (self.others + self.own)
        self.own_cpu += self.step * self.own
        return self.now

    def free_cores(self):
        return FreeCores(read=lambda: self.busy, clock=self.clock, own_cpu=lambda: self.own_cpu, n_cpus=2)


# Others' load that leaves both cores to us (under half a core) but is not idle: AutoThreads times
# the layers and re-checks the other count.
PARTIAL_LOAD = 0.3


def _run(auto, kind, cost_at, layers):
    used = []
    for _ in range(layers):
        n = auto.begin(kind)
        assert numba.get_num_threads() == n
        used.append(n)
        auto.end(kind, n, cost_at[n], 1)
    return used


def test_auto_threads_keeps_the_faster_count_and_rechecks():
    before = numba.get_num_threads()
    try:
        auto = AutoThreads(2, _Machine(others=PARTIAL_LOAD).free_cores())
        # 2 threads faster: nearly every layer at 2, 1 thread only to re-check
        # (4 re-checks of 4 layers in 600, backing off)
        used = _run(auto, "tg", {2: 1.0, 1: 1.6}, 600)
        assert auto.kinds["tg"].choice == 2 and used.count(1) <= 20
        # more load arrives, 2 threads now 5x slower: the choice moves to 1 thread within a few layers
        used = _run(auto, "tg", {2: 8.0, 1: 1.6}, 200)
        assert auto.kinds["tg"].choice == 1 and used[20:].count(2) <= 6
        # load gone: back to 2 threads after a re-check
        used = _run(auto, "tg", {2: 1.0, 1: 1.6}, 600)
        assert auto.kinds["tg"].choice == 2 and used[-300:].count(1) <= 3
        # kinds are measured apart
        _run(auto, "pp", {2: 1.0, 1: 0.5}, 100)
        assert auto.kinds["pp"].choice == 1 and auto.steady("pp") == 1 and auto.steady("tg") == 2
    finally:
        numba.set_num_threads(before)


def test_one_lucky_layer_does_not_switch():
    before = numba.get_num_threads()
    try:
        auto = AutoThreads(2, _Machine(others=PARTIAL_LOAD).free_cores())
        _run(auto, "tg", {2: 1.0, 1: 1.6}, 100)
        lucky, choices = True, []
        for _ in range(600):  # the first layer at 1 thread is fast by chance, the rest are not
            n = auto.begin("tg")
            auto.end("tg", n, 1.0 if n == 2 else 0.5 if lucky else 1.6, 1)
            lucky = lucky and n == 2
            choices.append(auto.kinds["tg"].choice)
        assert set(choices) == {2}
        # a re-check whose layers all win does switch
        _run(auto, "tg", {2: 1.0, 1: 0.5}, 300)
        assert auto.kinds["tg"].choice == 1
    finally:
        numba.set_num_threads(before)


def test_free_cores_count_the_others_load_with_a_margin_to_rise():
    machine = _Machine(own=2.0, step=0.01)  # our own threads are not load
    free = machine.free_cores()
    assert not free.idle  # nothing measured yet
    # the first estimate after FIRST_WINDOW, not WINDOW: a short command is not run blind
    assert [free.cap(2) for _ in range(5)][-1] == 2 and free.measured and free.idle
    machine.step = 0.1
    assert free.cap(8) == 2
    for others, cores, idle in ((1.0, 1, False), (0.4, 1, False), (0.1, 2, True), (0.6, 1, False), (2.0, 1, False),
                                (0.0, 2, True), (0.3, 2, False)):
        machine.others = others
        assert [free.cap(2) for _ in range(5)][-1] == cores, others
        assert free.idle == idle, others


def test_the_first_estimate_comes_soon_enough_for_a_short_command():
    machine = _Machine(others=1.0, step=0.01)
    free = machine.free_cores()
    assert [free.cap(2) for _ in range(6)] == [2, 2, 2, 2, 1, 1]


def test_an_idle_machine_runs_every_layer_at_the_free_cores_without_rechecks():
    before = numba.get_num_threads()
    try:
        machine = _Machine()
        auto = AutoThreads(2, machine.free_cores())
        # even layers whose time says 1 thread would do: on an idle machine nothing is re-checked
        # (a 1-thread re-check costs more than the rare case it could catch)
        assert set(_run(auto, "tg", {2: 1.0, 1: 0.9}, 600)) == {2}
        assert auto.kinds["tg"].cost == {} and auto.steady("tg") == 2
        machine.others = PARTIAL_LOAD  # load appears: timed and re-checked again, 1 thread wins
        _run(auto, "tg", {2: 1.0, 1: 0.5}, 100)
        assert auto.kinds["tg"].choice == 1
        machine.others = 0.0  # idle again: the free cores at once
        assert set(_run(auto, "tg", {2: 1.0, 1: 0.5}, 100)[5:]) == {2}
    finally:
        numba.set_num_threads(before)


def test_auto_threads_uses_one_thread_without_rechecks_while_the_cores_are_busy():
    before = numba.get_num_threads()
    try:
        machine = _Machine(others=1.0)
        auto = AutoThreads(2, machine.free_cores())
        used = _run(auto, "tg", {2: 1.0, 1: 1.6}, 100)
        assert set(used[5:]) == {1} and auto.steady("tg") == 1
        machine.others = 0.0  # the load leaves: 2 threads again, measured afresh
        assert _run(auto, "tg", {2: 1.0, 1: 1.6}, 100)[-1] == 2
    finally:
        numba.set_num_threads(before)


def test_one_thread_never_probes():
    auto = AutoThreads(1)
    assert set(_run(auto, "tg", {1: 1.0}, 50)) == {1}


def test_threading_layer_is_named():
    from llmcli.engine.matmul import QuantizedMatrix  # noqa: F401  (some kernel has run in this session)

    assert threading_layer() == "" or threading_layer().split()[0] in ("omp", "tbb", "workqueue")
