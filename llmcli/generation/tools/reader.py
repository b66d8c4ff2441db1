"""Reading a reply into content and tool calls as it is generated.

    reader = ReplyReader(HERMES)
    for piece in pieces:
        for item in reader.feed(piece):     # str: content to show now; ToolCall: a finished call;
            ...                              # (enforced) CallHead, ArgumentsPart: a call as it comes
    reader.finish()                          # the rest, once the reply has ended
    reader.content, reader.tool_calls        # the whole reply, read

Streaming and whole replies go through this one reader (a whole reply is one piece), so both
read the same. Content streams as it comes, except text that may still turn out to be a call: a
tail that could be the beginning of a call marker, a call being read, and blanks that would be cut
if a call followed (blanks touching a call are dropped). A call is handed over once it is complete
and reads as a call; text that looked like a call but does not read as one (malformed JSON) is
content after all. Such a call (tool_choice "auto") is handed over whole: had its arguments gone
out piece by piece, a call that then turned out malformed could not be taken back, and the streamed
reply would make a call that the same reply read whole does not.

`ReplyReader(fmt, enforced=True)` reads a reply that a grammar holds to one of the format's call
layouts (tool_choice "required" or a named function; formats with `layouts`): it is calls only, in
that exact syntax, so each call is announced as soon as its arguments begin — a `CallHead` (index,
id, name) — and the arguments' text follows as `ArgumentsPart`s as it comes, nothing held back
(every character inside the arguments object is the arguments' text; the object's closing brace is
found by following brackets and strings), then the finished `ToolCall`, whose `arguments` are those
parts joined. An announced call stands, so that a streamed reply and the same reply read whole
agree: a reply cut short (max_tokens, a stop string) inside a call's arguments makes that call with
the arguments written so far (finish_reason "length" tells a client why they may not parse), and
the unfinished syntax after announced calls is dropped. A reply cut before any call was announced,
or text that departs from the layout (which the grammar rules out), is read as usual from there on.
Whole or in pieces, the same text gives the same content and calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from .formats import (CALL_NAME_OPEN, NEED_MORE, Block, CallLayout, ReplyText, ToolFormat, call_args_open,
                      skip_blank)
from .spec import TOOL_NAME, ToolCall


@dataclass(frozen=True)
class CallHead:
    """A call has begun (enforced replies): its place among the reply's calls, its id and name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsPart:
    """More of call `index`'s arguments text: a call's parts, joined, are its `arguments`."""

    index: int
    text: str


# The steps of reading a reply by its layout.
_BEFORE, _HEAD, _ARGUMENTS, _CLOSE, _NEXT, _DONE = "before", "head", "arguments", "close", "next", "done"
_MORE = "more"  # the text so far fits the layout and says no more


class ReplyReader:
    def __init__(self, fmt: ToolFormat | None, enforced: bool = False):
        """`fmt`: the format to read calls in; None: every piece is content as it is. `enforced`:
        a grammar holds the reply to one of `fmt.layouts` (see the module docstring); a format
        without layouts is read as usual."""
        self.fmt = fmt
        self._reply = ReplyText()
        self.content_parts: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self._pos = 0  # text before this is handed over (or dropped)
        self._blank = ""  # blanks after the content handed over, kept back until content follows
        self._after_call = False  # drop the blanks that start the next content
        self._has_content = False  # a call that is the whole reply (fmt.opening) can no longer start
        self._finished = False
        # reading by the layout (enforced): the step, the layout once known, the announced call
        self._layouts = fmt.layouts if fmt is not None and enforced else ()
        self._step = _BEFORE if self._layouts else None
        self._layout: CallLayout | None = None
        self._call: tuple[CallHead, int] | None = None  # (its head, where its arguments begin)
        self._sent = 0  # the call's arguments text handed over up to here

    @property
    def text(self) -> str:
        """The whole reply fed so far."""
        return self._reply.text

    @property
    def content(self) -> str | None:
        """The reply's text outside its calls; None when the reply is only calls."""
        text = "".join(self.content_parts)
        return None if not text and self.tool_calls else text

    def feed(self, piece: str) -> list[str | CallHead | ArgumentsPart | ToolCall]:
        self._reply.grow(piece)
        if self.fmt is None:
            return self._say_as_is(piece)
        return self._advance(final=False)

    def finish(self) -> list[str | CallHead | ArgumentsPart | ToolCall]:
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

    def _advance(self, final: bool) -> list:
        out: list = []
        if self._step is not None:
            self._read_laid_out(final, out)
            if self._step is not None:
                return out
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

    # -- by the layout (enforced replies) ---------------------------------------------------------

    def _read_laid_out(self, final: bool, out: list) -> None:
        """Follow the layout as far as the text goes. Leaves `_step` None once the rest of the
        reply is to be read as usual from `_pos` (or, `_pos` at the end, is done with)."""
        while self._step is not None:
            found = getattr(self, "_laid_out_" + self._step)(out)
            if found is None:  # the text departs from the layout
                self._leave_layout()
            elif found == _MORE:
                if final:
                    self._end_laid_out(out)
                return

    def _laid_out_before(self, out: list):
        text, pos = self.text, self._pos
        fitting = [lay for lay in self._layouts if _fits(text, pos, lay.before) is not None]
        if not fitting:
            return None
        whole = [lay for lay in fitting if _fits(text, pos, lay.before)]
        if len(whole) < len(fitting):  # a longer opening may still come
            return _MORE
        self._layout = max(whole, key=lambda lay: len(lay.before))
        self._pos += len(self._layout.before)
        self._step = _HEAD
        return True

    def _laid_out_head(self, out: list):
        """`{"name": "<name>", "<args_key>": {`: the call is announced."""
        text, pos = self.text, self._pos
        fits = _fits(text, pos, CALL_NAME_OPEN)
        if not fits:
            return None if fits is None else _MORE
        name_at = pos + len(CALL_NAME_OPEN)
        name_end = text.find('"', name_at)
        if name_end < 0:  # the name so far
            return None if name_at < len(text) and not TOOL_NAME.fullmatch(text[name_at:]) else _MORE
        name = text[name_at:name_end]
        args_open = call_args_open(self.fmt.args_key)
        fits = _fits(text, name_end, args_open + "{") if TOOL_NAME.fullmatch(name) else None
        if not fits:
            return None if fits is None else _MORE
        args_at = name_end + len(args_open)
        head = CallHead(len(self.tool_calls), self.fmt.new_id(), name)
        self._call, self._sent = (head, args_at), args_at
        out.append(head)
        self._step = _ARGUMENTS
        return True

    def _laid_out_arguments(self, out: list):
        text = self.text
        head, args_at = self._call
        end = self._reply.json_end(args_at)
        upto = len(text) if end is None else end
        if upto > self._sent:
            out.append(ArgumentsPart(head.index, text[self._sent:upto]))
            self._sent = upto
        if end is None:
            return _MORE
        self._end_call(out)
        self._pos = end
        self._step = _CLOSE
        return True

    def _laid_out_close(self, out: list):
        fits = _fits(self.text, self._pos, "}")
        if not fits:
            return None if fits is None else _MORE
        self._pos += 1
        self._step = _NEXT
        return True

    def _laid_out_next(self, out: list):
        """Another call (`between`) or the end (`after`); `after` may begin `between` (Hermes)."""
        text, pos, layout = self.text, self._pos, self._layout
        between = None if layout.between is None else _fits(text, pos, layout.between)
        if between:
            self._pos += len(layout.between)
            self._step = _HEAD
            return True
        if between is False:
            return _MORE
        after = _fits(text, pos, layout.after)
        if after:
            self._pos += len(layout.after)
            self._step = _DONE
            return True
        return None if after is None else _MORE

    def _laid_out_done(self, out: list):
        return _MORE if self._pos == len(self.text) else None

    def _end_call(self, out: list) -> None:
        """The announced call is finished: its arguments are the text handed over for it."""
        head, args_at = self._call
        call = ToolCall(head.id, head.name, self.text[args_at:self._sent])
        self.tool_calls.append(call)
        out.append(call)
        self._call = None

    def _end_laid_out(self, out: list) -> None:
        """The reply has ended where the layout waits for more."""
        if self._call is not None:  # cut inside the arguments: the call stands as written
            self._end_call(out)
        if self.tool_calls:  # unfinished syntax after the calls is not content
            self._pos = len(self.text)
            self._step = None
        else:
            self._leave_layout()

    def _leave_layout(self) -> None:
        """Read the rest as usual: all of the reply if no call was announced, else from where the
        layout was left."""
        if not self.tool_calls:
            self._pos = 0
        self._after_call = bool(self.tool_calls)
        self._step = None

    # -- content ---------------------------------------------------------------------------------

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


def _fits(text: str, pos: int, literal: str) -> bool | None:
    """True: `literal` is written at `pos`; False: the text ends with a beginning of it; None: the
    text there is something else."""
    rest = text[pos:pos + len(literal)]
    if rest == literal:
        return True
    return False if literal.startswith(rest) else None
