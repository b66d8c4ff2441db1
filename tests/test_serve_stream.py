"""The event-loop side of a generation (llmcli.server.stream.EngineStream) against a stand-in
engine: keep-alive ticks while nothing comes, events handed over from another thread, --timeout
cancelling and reporting "timeout", and close() cancelling a generation nobody reads."""

from __future__ import annotations

import asyncio
import threading

from llmcli.generation import Event, Request
from llmcli.server.stream import EngineStream


class QuietEngine:
    """Accepts one request and sends its events only when the test says so."""

    def __init__(self):
        self.cancelled = 0

    def submit(self, request, on_event):
        self.on_event = on_event
        engine = self

        class Handle:
            seq = None

            def cancel(self):
                engine.cancelled += 1

        return Handle()

    def send_later(self, delay: float, *events: Event) -> None:
        def send():
            for event in events:
                self.on_event(event)

        threading.Timer(delay, send).start()


def _collect(engine, ping, timeout, make_events):
    async def main():
        stream = EngineStream(engine, Request([1, 2, 3]), timeout)
        make_events()
        got = [event async for event in stream.events(ping)]
        return stream, got

    return asyncio.run(main())


def test_keep_alive_ticks_until_events_come_from_another_thread():
    engine = QuietEngine()
    stream, got = _collect(engine, 0.02, None, lambda: engine.send_later(
        0.2, Event("a", 5), Event(done=True, stop_reason="eos")))
    ticks = [e for e in got if e is None]
    assert len(ticks) >= 3 and [e.text for e in got if e is not None] == ["a", ""]
    assert got[-1].stop_reason == "eos" and stream.finished and stream.prompt_tokens == 3
    stream.close()
    assert engine.cancelled == 0  # finished: nothing to cancel


def test_timeout_cancels_and_says_so():
    engine = QuietEngine()
    # the engine answers a cancel with a done event, as the real one does
    original_submit = engine.submit

    def submit(request, on_event):
        handle = original_submit(request, on_event)
        handle.cancel = lambda: (setattr(engine, "cancelled", engine.cancelled + 1),
                                 engine.send_later(0.01, Event(done=True, stop_reason="cancelled")))
        return handle

    engine.submit = submit
    stream, got = _collect(engine, None, 0.1, lambda: None)
    assert engine.cancelled == 1 and stream.timed_out and got[-1].stop_reason == "timeout"


def test_close_cancels_an_unfinished_generation():
    engine = QuietEngine()

    async def main():
        stream = EngineStream(engine, Request([1]), None)
        stream.close()

    asyncio.run(main())
    assert engine.cancelled == 1
