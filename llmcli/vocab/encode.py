"""Text -> token ids, as llama.cpp's `llama_tokenize` gives them for a loaded `Vocab`.

First special tokens are cut out of the text (llama.cpp's `tokenizer_st_partition`): every token
whose attribute is control/user-defined/unknown, longest text first; control and unknown tokens
only when `parse_special=True`, user-defined ones always. Each plain-text piece between them is
then merged (see `merge`):

* SentencePiece (`llama`) - spaces become "▁" (with one prepended when `add_space_prefix`), pairs
  merge by the score of the token they make; a character no token covers becomes byte tokens
  `<0xXX>`. There are no words, but a cut before a "▁" whose left neighbour never precedes "▁"
  inside any token cannot be crossed by any merge, so the text is merged in those pieces.
* byte-level BPE (`gpt2`) - the pre-tokenizer's regexes cut words, each word's UTF-8 bytes are
  written with GPT-2's byte table and merged by `tokenizer.ggml.merges` rank.

Pieces and words repeat, so their ids are cached.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import BadInputError, FormatError, UnsupportedError
from .load import Vocab
from .merge import WordCache, byte_encode, merge
from .pretokenizers import splitter
from .tokens import LSTRIP, RSTRIP, SPACE_MARK, SPM

C_SPACE = frozenset(" \t\n\v\f\r")  # what C's isspace() strips around lstrip/rstrip tokens


class Encoder:
    """Tokenizes text with one vocabulary; holds that vocabulary's merge tables and caches."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.cache = WordCache()
        if vocab.model == SPM:
            self._spm_cut = spm_cut_pattern(vocab.tokens)
            self._neg_scores = (-np.asarray(vocab.scores, np.float64)).tolist()  # heap order: best score first
        else:
            self._split = splitter(vocab.pre.regexes).split

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """See `Tokenizer.tokenize`."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadInputError(f"text to tokenize is not valid Unicode: {e.reason} "
                                f"(U+{ord(text[e.start]):04X} at character {e.start})") from None
        vocab = self.vocab
        out: list[int] = []
        if add_special and vocab.add_bos:
            out.append(self._required("bos"))
        is_prev_special = True  # SPM: a space is prepended to text at the start or after a special
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                is_prev_special = True
            elif vocab.model == SPM:
                if vocab.add_space_prefix and is_prev_special:
                    frag = " " + frag
                out.extend(self._spm(frag))
                is_prev_special = False
            else:
                out.extend(self._bpe(frag))
        if add_special and vocab.add_eos:
            out.append(self._required("eos"))
        return out

    def _required(self, role: str) -> int:
        tid = self.vocab.special[role]
        if tid is None:
            raise FormatError(f"{self.vocab.source}: the tokenizer asks to add a {role.upper()} token "
                              f"but has none")
        return tid

    # Special tokens -------------------------------------------------------------------------------

    def _specials_in(self, text: str, parse_special: bool) -> list[int]:
        """The special tokens (in cutting order) whose text occurs in `text`. Only these can match
        in any fragment, since fragments are pieces of `text`."""
        vocab = self.vocab
        order = vocab.special_order if parse_special else vocab.user_defined_order
        tokens = vocab.tokens
        found = []
        grams = None  # every K-character window of the text, built when many tokens are to check
        k = 8
        for tid in order:
            tok = tokens[tid]
            if len(tok) >= k and len(order) > 64:
                if grams is None:
                    grams = {text[i:i + k] for i in range(len(text) - k + 1)}
                if tok[:k] not in grams:
                    continue
            if tok in text:
                found.append(tid)
        return found

    def _partition(self, text: str, parse_special: bool) -> list:
        """Cut special tokens out of `text`: a list of str (plain text) and int (token ids)."""
        if not text:
            return []
        frags: list = [(0, len(text))]
        tokens, attrs = self.vocab.tokens, self.vocab.attrs
        for tid in self._specials_in(text, parse_special):
            attr, tok = attrs[tid], tokens[tid]
            lstrip, rstrip = attr & LSTRIP, attr & RSTRIP
            size = len(tok)
            new = []
            for frag in frags:
                if isinstance(frag, int):
                    new.append(frag)
                    continue
                start, end = frag
                hit = text.find(tok, start, end)
                if hit < 0:
                    new.append(frag)
                    continue
                pos = start
                while hit >= 0:
                    left_end = hit
                    if lstrip:
                        while left_end > pos and text[left_end - 1] in C_SPACE:
                            left_end -= 1
                    if left_end > pos:
                        new.append((pos, left_end))
                    new.append(tid)
                    pos = hit + size
                    if rstrip:
                        while pos < end and text[pos] in C_SPACE:
                            pos += 1
                    hit = text.find(tok, pos, end)
                if pos < end:
                    new.append((pos, end))
            frags = new
        return [f if isinstance(f, int) else text[f[0]:f[1]] for f in frags]

    # SentencePiece --------------------------------------------------------------------------------

    def _spm(self, text: str) -> list[int]:
        return self.cache.ids(self._spm_cut.split(text.replace(" ", SPACE_MARK)), self._spm_piece)

    def _spm_piece(self, text: str) -> list[int]:
        vocab = self.vocab.token_to_id
        out = []
        for sym in merge(text, vocab, self._neg_scores, None):
            tid = vocab.get(sym)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(self._byte_token(b) for b in sym.encode("utf-8", "surrogateescape"))
        return out

    def _byte_token(self, b: int) -> int:
        token_to_id = self.vocab.token_to_id
        tid = token_to_id.get(f"<0x{b:02X}>")
        if tid is None:
            tid = token_to_id.get(bytes([b]).decode("utf-8", "surrogateescape"))
        if tid is None:
            raise UnsupportedError(f"{self.vocab.source}: text needs byte 0x{b:02X} but the vocabulary has "
                                   f"no byte token for it")
        return tid

    # Byte-level BPE -------------------------------------------------------------------------------

    def _bpe(self, text: str) -> list[int]:
        return self.cache.ids(map(byte_encode, self._split(text)), self._bpe_word)

    def _bpe_word(self, word: str) -> list[int]:
        vocab = self.vocab.token_to_id
        if self.vocab.ignore_merges and word in vocab:
            return [vocab[word]]
        ranks = self.vocab.bpe_ranks
        out = []
        for sym in merge(word, None, None, ranks):
            tid = vocab.get(sym)
            if tid is not None:
                out.append(tid)
                continue
            # No token: llama.cpp looks each UTF-8 byte up as a one-byte token (only ASCII can be).
            for b in sym.encode("utf-8", "surrogateescape"):
                tid = vocab.get(bytes([b]).decode("utf-8", "surrogateescape"))
                if tid is not None:
                    out.append(tid)
        return out


def spm_cut_pattern(tokens: list[str]) -> re.Pattern:
    """Where SPM text may be cut into independent pieces: before a "▁" whose left neighbour
    is never followed by "▁" inside a token (so no token can span the cut)."""
    joined = "\x00".join(tokens)
    if joined.count("\x00") == len(tokens) - 1:  # no token holds the separator
        # the character before each "▁": the last of every piece but the final one when split
        # at "▁" (str.split runs in C: ~3x re.findall on a 262k-token vocabulary)
        pieces = joined.split(SPACE_MARK)
        glue = {piece[-1] for piece in pieces[:-1] if piece}
        if not all(pieces[1:-1]):  # an empty piece between two marks: "▁" precedes a "▁"
            glue.add(SPACE_MARK)
        glue.discard("\x00")
    else:
        glue = {t[i - 1] for t in tokens for i in range(1, len(t)) if t[i] == SPACE_MARK}
    if glue:
        cls = "".join(sorted(re.escape(c) for c in glue))
        return re.compile(f"(?<![{cls}])(?={SPACE_MARK})")
    return re.compile(f"(?={SPACE_MARK})")
