"""Token ids -> bytes and text, as llama.cpp's `llama_token_to_piece` / `llama_detokenize` give them.

A token's piece: control/unknown tokens render as their text only when asked (as nothing
otherwise), user-defined ones as their text, normal SentencePiece tokens with "▁" back to spaces,
normal byte-level BPE tokens through GPT-2's byte table, byte tokens `<0xXX>` as that byte.
Byte-level BPE vocabularies also tidy spaces before punctuation (`clean_up_spaces`). Generated text
comes one token at a time: `StreamingDetokenizer` emits only whole UTF-8 characters.
"""

from __future__ import annotations

import codecs
from typing import Iterable

from .load import Vocab
from .merge import byte_decode
from .tokens import BYTE, HIDDEN_ATTRS, NORMAL, SPACE_MARK, SPM, USER_DEFINED


class Decoder:
    """Detokenizes with one vocabulary; keeps each token's piece once computed."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._pieces: dict[int, bytes] = {}

    def token_to_piece(self, tid: int, special: bool = True, lstrip: bool = False) -> bytes:
        """See `Tokenizer.token_to_piece`."""
        vocab = self.vocab
        if not 0 <= tid < len(vocab.tokens):
            raise IndexError(f"token id {tid} is outside the vocabulary (0..{len(vocab.tokens) - 1})")
        if not special and vocab.attrs[tid] & HIDDEN_ATTRS:
            return b""
        piece = self._pieces.get(tid)
        if piece is None:
            piece = self._pieces[tid] = self._piece(tid)
        if lstrip and piece[:1] == b" ":
            piece = piece[1:]
        return piece

    def _piece(self, tid: int) -> bytes:
        attr, text = self.vocab.attrs[tid], self.vocab.tokens[tid]
        if attr & (HIDDEN_ATTRS | USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if attr & NORMAL:
            if self.vocab.model == SPM:
                return text.replace(SPACE_MARK, " ").encode("utf-8", "surrogateescape")
            return byte_decode(text)
        if attr & BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused / undefined tokens render as nothing

    def detokenize_bytes(self, ids: Iterable[int], remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        """See `Tokenizer.detokenize_bytes`."""
        vocab = self.vocab
        ids = list(ids)
        remove_space = vocab.add_space_prefix
        if remove_special and vocab.add_bos and ids and ids[0] == vocab.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and vocab.add_eos and ids and ids[-1] == vocab.eos_id:
            ids = ids[:-1]
        parts = []
        for tid in ids:
            parts.append(self.token_to_piece(tid, special=unparse_special, lstrip=remove_space))
            remove_space = False
        text = b"".join(parts)
        if vocab.clean_spaces:
            text = clean_up_spaces(text)
        return text


def clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces, three passes over the bytes:
    drop the space before ? ! . , ; turn " ' " into "'"; drop the space before 's 'm 're 've."""
    if not text:
        return text
    buf = bytearray(text)
    # pass 1: " ?" " !" " ." " ,"
    if any(p in text for p in (b" ?", b" !", b" .", b" ,")):
        total = 1
        for i in range(1, len(buf)):
            x = buf[i]
            if buf[i - 1] == 0x20 and x in b"?!.,":
                total -= 1
            buf[total] = x
            total += 1
        del buf[total:]
    # pass 2: a lone apostrophe between spaces loses both spaces
    if b" ' " in buf:
        total = 1
        i = 1
        n = len(buf)
        while i < n:
            x = buf[i]
            if x == 0x27 and i + 1 < n and buf[i - 1] == 0x20 and buf[i + 1] == 0x20:
                total -= 1
                i += 1
                buf[i] = 0
            buf[total] = x
            total += 1
            i += 1
        del buf[total:]
    # pass 3: " 's" " 'm" " 're" " 've" lose the space (" 't" " 'd" " 'll" keep it)
    if b" '" in buf:
        total = 1
        n = len(buf)
        for i in range(1, n):
            x = buf[i]
            if buf[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
                x1 = buf[i + 1]
                if x1 in b"sm":
                    total -= 1
                elif x1 not in b"td" and i + 2 < n:
                    x2 = buf[i + 2]
                    if (x1, x2) in ((0x72, 0x65), (0x76, 0x65)):  # "re", "ve"
                        total -= 1
            buf[total] = x
            total += 1
        del buf[total:]
    return bytes(buf)


class StreamingDetokenizer:
    """Turns ids into text one at a time, emitting only complete UTF-8 characters.

    A character split over several tokens (byte tokens, or byte-level BPE pieces) comes out whole,
    once, when its last byte arrives; invalid byte sequences come out as U+FFFD. Call `flush()` at
    the end for anything still pending. `special`: control tokens show as their text (else as
    nothing, except those in `preserved`).
    """

    def __init__(self, decoder: Decoder, special: bool = False, preserved: frozenset[int] = frozenset()):
        self.decoder = decoder
        self.special = special
        self.preserved = preserved
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, tid: int) -> str:
        return self._utf8.decode(self.decoder.token_to_piece(tid, special=self.special or tid in self.preserved))

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
