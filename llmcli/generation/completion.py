"""`Completion`: one sequence driven from the calling thread.

Iterating a Completion steps its scheduler until the sequence ends, yielding text pieces as they
are decoded; sequences sharing the scheduler advance in the same steps. Afterwards `tokens`, `text`,
`stop_reason` (see sequence.STOP_REASONS) and `timings` are final. Ctrl-C while iterating ends it
with stop reason "interrupted", leaving the loop early with "cancelled", a failed step with
"error" (its slot is freed in every case).
"""

from __future__ import annotations

from typing import Iterator

from .interrupts import interrupts_at_token_boundaries
from .scheduler import Scheduler
from .sequence import Sequence, State


class Completion:
    def __init__(self, scheduler: Scheduler, seq: Sequence):
        self.scheduler = scheduler
        self.seq = seq

    @property
    def prompt_tokens(self) -> list[int]:
        return self.seq.prompt

    @property
    def tokens(self) -> list[int]:
        return self.seq.tokens

    @property
    def text(self) -> str:
        return self.seq.text

    @property
    def stop_reason(self) -> str | None:
        return self.seq.stop_reason

    @stop_reason.setter
    def stop_reason(self, reason: str) -> None:
        self.seq.stop_reason = reason

    @property
    def timings(self):
        return self.seq.timings

    @property
    def sampler(self):
        return self.seq.sampler

    def __iter__(self) -> Iterator[str]:
        seq, sched = self.seq, self.scheduler
        if seq.state is State.WAITING and seq not in sched.waiting:
            sched.submit(seq)
        # Ctrl-C is noted and acted on at the next token boundary (generation/interrupts.py), also
        # while the caller handles a piece: LLVM objects left by a compile are freed by the garbage
        # collector wherever it runs, and an exception inside that crashes the process.
        with interrupts_at_token_boundaries() as raise_noted:
            try:
                while True:
                    for piece in seq.take_pieces():
                        if piece.text:
                            yield piece.text
                    raise_noted()
                    if seq.done or not sched.step():
                        break
                    raise_noted()
            except KeyboardInterrupt:
                sched.cancel(seq, "interrupted")
            except GeneratorExit:  # the caller stopped reading: free the slot
                sched.cancel(seq, "cancelled")
                raise
            except BaseException:  # a step failed: free the slot
                sched.cancel(seq, "error")
                raise
        for piece in seq.take_pieces():
            if piece.text:
                yield piece.text

    def run(self) -> "Completion":
        """Generate to the end without streaming."""
        for _ in self:
            pass
        return self


class ChatCompletion(Completion):
    """A Completion read as a chat reply by a `ReplyReader` (generation/tools): iterating yields
    the reply's content as it comes (text that may be a tool call is held back until decided);
    afterwards `content` (None when the reply is only calls), `tool_calls` and `message` (the
    assistant message, OpenAI's shape, to append to the conversation). `text` stays the raw reply."""

    def __init__(self, scheduler: Scheduler, seq: Sequence, reader):
        super().__init__(scheduler, seq)
        self.reader = reader
        self._stream: Iterator[str] | None = None

    def _read(self) -> Iterator[str]:
        for piece in super().__iter__():
            yield from (item for item in self.reader.feed(piece) if isinstance(item, str))
        yield from (item for item in self.reader.finish() if isinstance(item, str))

    def __iter__(self) -> Iterator[str]:
        if self._stream is None:
            self._stream = self._read()
        return self._stream

    def __next__(self) -> str:
        return next(iter(self))

    @property
    def content(self) -> str | None:
        return self.reader.content

    @property
    def tool_calls(self) -> list:
        return self.reader.tool_calls

    @property
    def message(self) -> dict:
        message = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        return message
