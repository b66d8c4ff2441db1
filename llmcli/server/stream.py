"""One generation request seen from the event loop: submitted to the engine thread, its events
handed over with `loop.call_soon_threadsafe`, read here without blocking the loop.

The engine thread does the work (tokens, sampling, stop strings); this side only waits for events,
turns silence into keep-alive ticks (None) for SSE, enforces the server's --timeout by cancelling,
and cancels the generation when its reader goes away (`close`).
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from ..errors import LlmcliError
from ..generation import ContextSizeError, Engine, EngineClosedError, Event, QueueFullError, Request
from .errors import ApiError

SSE_DONE = b"data: [DONE]\n\n"
SSE_PING = b": ping\n\n"  # an SSE comment: keeps proxies and clients from timing out, shown to no one


def sse(body: dict) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class EngineStream:
    def __init__(self, engine: Engine, request: Request, timeout: float | None, on_done=None):
        """Submit `request`; refusals become ApiErrors. `on_done(sequence)` runs on the event loop
        when the request ends, however it ends (metrics count every request once)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._on_done = on_done

        def on_event(event: Event) -> None:  # on the engine thread
            loop.call_soon_threadsafe(self._arrived, event)

        self.prompt_tokens = len(request.prompt)
        try:
            self.handle = engine.submit(request, on_event=on_event)
        except QueueFullError as e:
            raise ApiError(503, f"{e}: try again shortly", headers={"Retry-After": "1"}) from None
        except ContextSizeError as e:
            raise ApiError(400, f"request ({e.n_prompt_tokens} tokens) exceeds the available context size "
                                f"({e.n_ctx} tokens), try increasing it with --ctx-size",
                           type="exceed_context_size_error", n_prompt_tokens=e.n_prompt_tokens,
                           n_ctx=e.n_ctx) from None
        except LlmcliError as e:
            raise ApiError(400, str(e)) from None
        except EngineClosedError:
            raise ApiError(503, "the server is shutting down") from None
        self.deadline = None if not timeout else loop.time() + timeout
        self.timed_out = False
        self.finished = False

    def _arrived(self, event: Event) -> None:  # on the event loop, so after __init__ has set handle
        if event.done and self._on_done is not None:
            self._on_done(self.handle.seq)
        self._events.put_nowait(event)

    @property
    def seq(self):
        """The sequence; read its tokens and timings only once the done event came."""
        return self.handle.seq

    async def events(self, ping_interval: float | None = None) -> AsyncIterator[Event | None]:
        """Events up to the done one (an ended-by-error one included); None after each
        `ping_interval` seconds without any."""
        while True:
            wait = ping_interval
            if self.deadline is not None and not self.timed_out:
                left = self.deadline - self._loop.time()
                if left <= 0:
                    self.timed_out = True
                    self.handle.cancel()
                    continue
                wait = left if wait is None else min(wait, left)
            try:
                event = await asyncio.wait_for(self._events.get(), wait)
            except TimeoutError:
                if ping_interval is not None:
                    yield None
                continue
            if event.done:
                self.finished = True
                if self.timed_out and event.stop_reason == "cancelled":
                    event.stop_reason = "timeout"
            yield event
            if event.done:
                return

    def close(self) -> None:
        """The reader is gone (or done): a generation still running ends at its next token."""
        if not self.finished:
            self.handle.cancel()

    def completion_tokens(self) -> int:
        return len(self.seq.tokens)

    def cached_tokens(self) -> int:
        evaluated = self.seq.timings.prompt_n
        return self.prompt_tokens - evaluated if evaluated else 0


def error_of(event: Event) -> ApiError:
    """The ApiError for a generation ended by an error event."""
    if isinstance(event.error, EngineClosedError):
        return ApiError(503, "the server is shutting down")
    return ApiError(500, f"generation failed: {type(event.error).__name__}: {event.error}")
