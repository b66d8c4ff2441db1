"""Numba compilation, watched as it happens.

Every kernel is `cache=True`: the first call of a kernel in a process either loads it from numba's
disk cache (milliseconds) or compiles it (seconds; the first run after an install, or a kernel no
earlier command used). Numba announces real compilations (not cache loads) as "numba:compile"
events; this module listens to them so that

* `compile_seconds()` tells how long this process has spent compiling, and timings can leave it
  out (a first run must not report compile time as tokens/s);
* `on_compile_start(callback)` lets the command line say "compiling kernels" exactly when it
  happens, whichever command compiled what before.

Numba compiles under one global lock, so nested events (a kernel compiling the functions it
calls) are counted once, by depth.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from numba.core import event


class _CompileClock(event.Listener):
    def __init__(self):
        self.depth = 0
        self.started = 0.0
        self.total = 0.0
        self.callbacks: list[Callable[[], None]] = []
        self.lock = threading.Lock()

    def on_start(self, ev) -> None:
        with self.lock:
            self.depth += 1
            if self.depth > 1:
                return
            self.started = time.perf_counter()
            callbacks = list(self.callbacks)
        for callback in callbacks:
            callback()

    def on_end(self, ev) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                self.total += time.perf_counter() - self.started

    def seconds(self) -> float:
        with self.lock:
            running = time.perf_counter() - self.started if self.depth else 0.0
            return self.total + running


_clock = _CompileClock()
event.register("numba:compile", _clock)


def compile_seconds() -> float:
    """Seconds this process has spent compiling kernels so far (cache loads not included)."""
    return _clock.seconds()


def on_compile_start(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback()` whenever a compilation starts; returns a function that removes it."""
    with _clock.lock:
        _clock.callbacks.append(callback)

    def remove() -> None:
        with _clock.lock:
            if callback in _clock.callbacks:
                _clock.callbacks.remove(callback)

    return remove
