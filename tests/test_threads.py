"""The default thread count follows measured speed (engine/threads.py)."""

import numba

from llmcli.engine.threads import AutoThreads, threading_layer


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
        auto = AutoThreads(2)
        # 2 threads faster (an idle machine): nearly every layer at 2, 1 thread only to re-check
        used = _run(auto, "tg", {2: 1.0, 1: 1.6}, 600)
        assert auto.kinds["tg"].choice == 2 and used.count(1) <= 12
        # load arrives, 2 threads now 5x slower: the choice moves to 1 thread within a few layers
        used = _run(auto, "tg", {2: 8.0, 1: 1.6}, 200)
        assert auto.kinds["tg"].choice == 1 and used[20:].count(2) <= 6
        # load gone: back to 2 threads after a re-check
        used = _run(auto, "tg", {2: 1.0, 1: 1.6}, 600)
        assert auto.kinds["tg"].choice == 2 and used[-300:].count(1) <= 3
        # kinds are measured apart
        assert _run(auto, "pp", {2: 1.0, 1: 0.5}, 100)[-1] == 1 and auto.steady("tg") == 2
    finally:
        numba.set_num_threads(before)


def test_one_thread_never_probes():
    auto = AutoThreads(1)
    assert set(_run(auto, "tg", {1: 1.0}, 50)) == {1}


def test_threading_layer_is_named():
    from llmcli.engine.matmul import QuantizedMatrix  # noqa: F401  (some kernel has run in this session)

    assert threading_layer() == "" or threading_layer().split()[0] in ("omp", "tbb", "workqueue")
