"""Reading a reply into content and tool calls as it is generated.

    reader = ReplyReader(HERMES)
    for piece in pieces:
        for item in reader.feed(piece):     # str: content to show now; ToolCall: a finished call
            ...
    reader.finish()                          # the rest, once the reply has ended
    reader.content, reader.tool_calls        # the whole reply, read

Streaming and whole replies go through this one reader (a whole reply is one piece), so both
read the same. Content streams as it comes, except text that may still turn out to be a call: a
tail that could be the beginning of a call marker, a call being read, and blanks that would be cut
if a call followed (blanks touching a call are dropped). A call is handed over once it is complete
and reads as a call; text that looked like a call but does not read as one (malformed JSON) is
content after all.
"""

from __future__ import annotations

from .formats import NEED_MORE, Block, ReplyText, ToolFormat, skip_blank
from .spec import ToolCall


class ReplyReader:
    def __init__(self, fmt: ToolFormat | None):
        """`fmt`: the format to read calls in; None: every piece is content as it is."""
        self.fmt = fmt
        self._reply = ReplyText()
        self.content_parts: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self._pos = 0  # text before this is handed over (or dropped)
        self._blank = ""  # blanks after the content handed over, kept back until content follows
        self._after_call = False  # drop the blanks that start the next content
        self._has_content = False  # a call that is the whole reply (fmt.opening) can no longer start
        self._finished = False

    @property
    def text(self) -> str:
        """The whole reply fed so far."""
        return self._reply.text

    @property
    def content(self) -> str | None:
        """The reply's text outside its calls; None when the reply is only calls."""
        text = "".join(self.content_parts)
        return None if not text and self.tool_calls else text

    def feed(self, piece: str) -> list[str | ToolCall]:
        self._reply.grow(piece)
        if self.fmt is None:
            return self._say_as_is(piece)
        return self._advance(final=False)

    def finish(self) -> list[str | ToolCall]:
        """What is left once the reply has ended (unfinished calls are read leniently, or are content)."""
        if self._finished:
            return []
        self._finished = True
        if self.fmt is None:
            return []
        out = self._advance(final=True)
        if self._blank and not self._after_call:
            self._say_as_is(self._blank, out)
        self._blank = ""
        return out

    # -- the work ------------------------------------------------------------------------------

    def _advance(self, final: bool) -> list[str | ToolCall]:
        out: list[str | ToolCall] = []
        text = self.text
        while True:
            start, reader, marker_len = self._next_call_start()
            if reader is None:
                end = len(text) if final else len(text) - self._held_tail()
                self._say(text[self._pos:end], out)
                self._pos = end
                return out
            self._say(text[self._pos:start], out)
            self._pos = start
            found = reader(self._reply, start, final)
            if found == NEED_MORE:
                return out
            if found is None:  # not a call after all: the marker is text
                self._say(text[start:start + marker_len], out)
                self._pos = start + marker_len
                continue
            self._take_block(found, out)

    def _next_call_start(self):
        """(where, reader, length of its marker) of the first possible call at or after the
        position, or (None, None, 0)."""
        text, pos = self.text, self._pos
        best = (None, None, 0)
        for marker, reader in self.fmt.openers.items():
            i = text.find(marker, pos)
            if i >= 0 and (best[0] is None or i < best[0]):
                best = (i, reader, len(marker))
        if self.fmt.opening is not None and not self._has_content:
            i = skip_blank(text, pos)
            if i < len(text) and text[i] == "{" and (best[0] is None or i < best[0]):
                best = (i, self.fmt.opening, 1)
        return best

    def _held_tail(self) -> int:
        """Characters at the end that may begin a call marker (kept back until more text decides)."""
        rest = self.text[self._pos:]
        held = 0
        for marker in self.fmt.openers:
            for n in range(min(len(marker) - 1, len(rest)), held, -1):
                if rest.endswith(marker[:n]):
                    held = n
                    break
        return held

    def _take_block(self, block: Block, out: list) -> None:
        self._blank = ""  # blanks before a call are dropped
        if block.content:
            self._say(block.content, out)
        for raw in block.calls:
            call = self.fmt.call_from(raw)
            self.tool_calls.append(call)
            out.append(call)
        if block.calls:
            self._after_call = True
        self._pos = block.end

    def _say(self, text: str, out: list) -> None:
        """Hand over content, keeping trailing blanks back (a call may follow) and dropping the
        blanks that follow a call."""
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        text = self._blank + text
        body = text.rstrip()
        self._blank = text[len(body):]
        if body:
            self._say_as_is(body, out)

    def _say_as_is(self, text: str, out: list | None = None) -> list:
        out = [] if out is None else out
        if text:
            self.content_parts.append(text)
            self._has_content = self._has_content or not text.isspace()
            out.append(text)
        return out
