"""`Engine`: a scheduler stepped by its own thread, fed from any thread.

    engine = Engine(Scheduler(model, tokenizer, n_parallel=4))
    handle = engine.submit(Request(ids, max_tokens=64))    # from any thread
    for event in handle:                                    # blocks until each token is decoded
        print(event.text, end="")
    handle.cancel()                                         # at the next token boundary
    engine.close()

Only the engine thread touches the model and the KV cache. The kernels release the GIL, so the
submitting threads (an HTTP server's event loop, a batch job's reader) stay responsive while a
step computes. A submit beyond `max_queue` waiting requests raises `QueueFullError` at once.

Each request's events go to its handle's queue, or to `on_event(event)` when given (called on the
engine thread; a server hands it to its event loop with `loop.call_soon_threadsafe`). The last
event of a request has `done=True` and carries its stop reason, or the error that ended it.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from .scheduler import Scheduler
from .sequence import Request, Sequence, TokenLogprob


class EngineClosedError(RuntimeError):
    """The engine was closed: a submit after close, or the end of a request still running then."""


@dataclass
class Event:
    text: str = ""
    token: int | None = None
    done: bool = False
    stop_reason: str | None = None
    error: BaseException | None = None
    logprob: TokenLogprob | None = None  # when the request asked for logprobs


class Handle:
    """One submitted request: iterate its events (blocking), cancel it, read its sequence."""

    def __init__(self, engine: "Engine", seq: Sequence, on_event: Callable[[Event], None] | None):
        self.engine = engine
        self.seq = seq
        self._queue: queue.Queue[Event] | None = None if on_event else queue.Queue()
        self.on_event = on_event or self._queue.put

    def cancel(self) -> None:
        self.engine.cancel(self)

    def __iter__(self) -> Iterator[Event]:
        if self._queue is None:
            raise RuntimeError("this request's events go to its on_event callback")
        while True:
            event = self._queue.get()
            if event.error is not None:
                raise event.error
            yield event
            if event.done:
                return


class Engine:
    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self._cond = threading.Condition()
        self._inbox: list[Handle] = []
        self._cancels: list[Handle] = []
        self._handles: list[Handle] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="llmcli-engine", daemon=True)
        self._thread.start()

    # -- any thread ----------------------------------------------------------------------------

    def submit(self, request: Request, on_event: Callable[[Event], None] | None = None) -> Handle:
        """Queue a request (checked here, so a bad one raises in the caller's thread)."""
        seq = self.scheduler.new_sequence(request)
        handle = Handle(self, seq, on_event)
        sched = self.scheduler
        with self._cond:
            if self._closing:
                raise EngineClosedError("the engine is closed")
            # read from outside the engine thread: at worst one step stale
            sched.check_queue(also_waiting=len(self._inbox))
            self._inbox.append(handle)
            self._cond.notify()
        return handle

    def cancel(self, handle: Handle) -> None:
        with self._cond:
            self._cancels.append(handle)
            self._cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread (after the step it is in); requests still running end with an
        EngineClosedError event. timeout=0: ask it to stop and return at once."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def n_active(self) -> int:
        return len(self._handles) + len(self._inbox)

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        sched = self.scheduler
        # numba's thread count is per calling thread: give this one the model's
        sched.model.set_threads(getattr(sched.model, "thread_setting", sched.model.threads))
        while True:
            with self._cond:
                while not (self._inbox or self._cancels or self._closing or sched.busy):
                    self._cond.wait()
                if self._closing:
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            for handle in inbox:
                sched.waiting.append(handle.seq)
                self._handles.append(handle)
            for handle in cancels:
                sched.cancel(handle.seq)
            try:
                sched.step()
            except Exception as error:  # a failed step ends the sequences in it, not the engine
                for handle in list(self._handles):
                    if not handle.seq.done:
                        sched.cancel(handle.seq, "error")
                        self._send(handle, Event(done=True, stop_reason="error", error=error))
                self._handles = [h for h in self._handles if not h.seq.done]
            self._deliver()
        stopped = EngineClosedError("the engine stopped before this request finished")
        for handle in self._handles + self._inbox:
            self._send(handle, Event(done=True, stop_reason="error", error=stopped))

    def _deliver(self) -> None:
        still = []
        for handle in self._handles:
            seq = handle.seq
            for piece in seq.take_pieces():
                self._send(handle, Event(piece.text, piece.token, logprob=piece.logprob))
            if seq.done:
                self._send(handle, Event(done=True, stop_reason=seq.stop_reason))
            else:
                still.append(handle)
        self._handles = still

    @staticmethod
    def _send(handle: Handle, event: Event) -> None:
        try:
            handle.on_event(event)
        except Exception:  # a consumer's callback failing must not stop the engine for others
            handle.seq.cancel_requested = True
