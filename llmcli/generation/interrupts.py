"""Ctrl-C acted on at token boundaries.

Python raises KeyboardInterrupt at whatever bytecode runs when SIGINT arrives. During a step that can
be inside numba's compiler (a kernel's first use on a machine) or inside llvmlite's disposal of the
objects a compile left, which the garbage collector runs wherever it happens to run, and an
exception there leaves LLVM's state half torn down: the process then died of a segmentation fault
instead of printing what it had generated (2 of 12 cold-cache runs of
test_ctrl_c_stops_generation_and_still_prints_timings). While a completion is iterated, a first
Ctrl-C is only noted and raised as KeyboardInterrupt at the next token boundary; a second one
raises at once, for a step that will not end.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def interrupts_at_token_boundaries() -> Iterator[Callable[[], None]]:
    """Within: SIGINT is noted, not raised (twice: raised). The yielded function raises the noted
    KeyboardInterrupt; call it at each token boundary. Only on the main thread and only over Python's own
    handler: an application's SIGINT handler (a server's) is left alone."""
    noted: list[bool] = []

    def raise_noted() -> None:
        if noted:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield raise_noted
        return

    def note(signum, frame):
        if noted:
            raise KeyboardInterrupt
        noted.append(True)

    signal.signal(signal.SIGINT, note)
    try:
        yield raise_noted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
