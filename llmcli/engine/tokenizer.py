"""The runtime tokenizer, built from a GGUF file's `tokenizer.*` metadata, giving llama.cpp's ids.

Two vocabulary kinds, as `tokenizer.ggml.model` names them:

* `llama` - SentencePiece (SPM). Spaces become U+2581 "▁" (with one prepended when
  `add_space_prefix`), then characters are merged pairwise, always the pair whose merged text is the
  vocabulary token with the highest score (ties: the leftmost pair). A character no token covers is
  emitted as byte tokens `<0xXX>`.
* `gpt2` - byte-level BPE. A pre-tokenizer (`tokenizer.ggml.pre`, see `llmcli.vocab.pretokenizers`)
  cuts the text into words, each word's UTF-8 bytes are written with GPT-2's byte-to-character
  table, and pairs are merged by `tokenizer.ggml.merges` rank (lowest first, ties: leftmost).

Before either, special tokens are cut out of the text (llama.cpp's `tokenizer_st_partition`): every
token whose type is control/user-defined/unknown, longest text first; control and unknown tokens only
when `parse_special=True`, user-defined ones always. Token attributes, end-of-generation ids and the
name-based fixes (phi-3's right-strip) follow llama.cpp's `llama_vocab::load`.

Speed: merging is a heap of candidate pairs per word; words repeat, so results are cached per word.
SPM has no words, but a cut before a "▁" whose left neighbour never precedes "▁" inside any token
cannot be crossed by any merge, so the text is merged in those independent pieces.
"""

from __future__ import annotations

import codecs
import heapq
import re
from functools import lru_cache
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import BadInputError, FormatError, UnsupportedError
from ..vocab.pretokenizers import PreTokenizer, pre_tokenizer, splitter
from ..vocab.tokens import (ADD_TOKEN_KEYS, BPE, BYTE, CONTROL, DEPRECATED_ID_KEYS, HIDDEN_ATTRS, KEY,
                            LSTRIP, NORMAL, RSTRIP, SPACE_MARK, SPECIAL_ATTRS, SPECIAL_ID_KEYS, SPM,
                            TOKEN_TYPE_ATTR, UNUSED, USER_DEFINED, TokenAttr)

C_SPACE = frozenset(" \t\n\v\f\r")  # what C's isspace() strips around lstrip/rstrip tokens

# Defaults before metadata, per vocabulary kind.
KIND_DEFAULTS = {
    SPM: dict(ids=dict(bos=1, eos=2, unk=0), add_bos=True, add_space_prefix=True, clean_spaces=False),
    BPE: dict(ids=dict(bos=11, eos=11), add_bos=False, add_space_prefix=False, clean_spaces=True),
}

# Roles found by token text when the metadata does not name them (llama.cpp's workaround).
ROLE_TEXTS = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
            "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
            "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

# Token texts that end generation wherever they are in the vocabulary.
EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
])

# gpt-oss: always rendered.
ALWAYS_RENDERED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


# -- GPT-2 byte <-> character table ---------------------------------------------------------------

def _byte_chars() -> list[str]:
    """Byte b -> the printable character byte-level BPE writes for it."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_CHARS = _byte_chars()
CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}
_LATIN1_TO_BYTE_CHAR = {b: BYTE_CHARS[b] for b in range(256)}


def byte_encode(text: str) -> str:
    """A word as byte-level BPE sees it: each UTF-8 byte as its table character."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1").translate(_LATIN1_TO_BYTE_CHAR)


def byte_decode(token_text: str) -> bytes:
    """Bytes of a byte-level token; characters outside the table render as llama.cpp does."""
    out = bytearray()
    for ch in token_text:
        b = CHAR_BYTES.get(ch)
        if b is not None:
            out.append(b)
        else:
            utf8 = ch.encode("utf-8", "surrogateescape")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + token_text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)


# -- merging --------------------------------------------------------------------------------------
#
# A word is a doubly linked list of symbols (start, length) over its characters; candidate pairs
# sit in a heap keyed (priority, left index) so the best pair, leftmost among equals, merges first.
# A popped pair whose symbols changed since it was pushed is stale and skipped.

def _merge(text: str, spm_vocab: dict | None, spm_priority: list | None,
           bpe_ranks: dict | None) -> list[str]:
    """The symbols left after merging `text`, one character per symbol to start with.

    SPM (spm_vocab given): a pair merges when left+right is a token; priority -score.
    BPE (bpe_ranks given): a pair merges when (left, right) is a merge; priority its rank.
    Lower priority merges first. Written out inline: this loop is the tokenizer's hot path.
    """
    n = len(text)
    if n < 2:
        return [text] if n else []
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap = []
    if spm_vocab is not None:
        for i in range(n - 1):
            tid = spm_vocab.get(text[i:i + 2])
            if tid is not None:
                heap.append((spm_priority[tid], i, i + 1, 1, 1))
    else:
        for i in range(n - 1):
            rank = bpe_ranks.get((text[i], text[i + 1]))
            if rank is not None:
                heap.append((rank, i, i + 1, 1, 1))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush

    while heap:
        _, left, right, len_left, len_right = pop(heap)
        if length[left] != len_left or length[right] != len_right or not len_left or not len_right:
            continue  # stale: one side changed since this pair was queued
        size = len_left + len_right
        length[left] = size
        length[right] = 0
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prev[after] = left
        # queue the new pairs (prev, merged) and (merged, after)
        before = prev[left]
        for a, b in ((before, left), (left, after)):
            if a < 0 or b < 0:
                continue
            la, lb = length[a], length[b]
            if spm_vocab is not None:
                tid = spm_vocab.get(text[a:a + la + lb])
                if tid is not None:
                    push(heap, (spm_priority[tid], a, b, la, lb))
            else:
                rank = bpe_ranks.get((text[a:a + la], text[b:b + lb]))
                if rank is not None:
                    push(heap, (rank, a, b, la, lb))

    out = []
    i = 0
    while i >= 0:
        out.append(text[i:i + length[i]])
        i = nxt[i]
    return out


class _WordCache(dict):
    """Per-word results; cleared when it grows past `limit` words (memory stays bounded)."""

    def __init__(self, limit: int = 200_000):
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: list[int]) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value


@lru_cache(maxsize=None)
def _attr_flag(value: int) -> TokenAttr:
    return TokenAttr(value)  # building an IntFlag is slow; there are only a few distinct values


# -- metadata helpers -----------------------------------------------------------------------------

def _as_list(value: Any) -> list:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


class Tokenizer:
    """Text <-> token ids exactly as llama.cpp (commit 0c1e570) does for the same GGUF metadata."""

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, reader) -> "Tokenizer":
        """From an open `GGUFReader`."""
        wanted = {"general.name", "general.architecture"}
        md = {}
        for key, mv in reader.metadata.items():
            if key.startswith(KEY) or key in wanted:
                md[key] = mv.value
        return cls.from_metadata(md, source=str(reader.path))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "metadata") -> "Tokenizer":
        """From plain metadata: key -> value (arrays as lists or numpy arrays)."""
        return cls(metadata, source)

    def __init__(self, md: Mapping[str, Any], source: str = "metadata"):
        self.source = source
        model = md.get(KEY + "model")
        if model is None:
            raise FormatError(f"{source}: no tokenizer (metadata '{KEY}model' is missing)")
        if model not in KIND_DEFAULTS:
            raise UnsupportedError(f"{source}: tokenizer model '{model}' is not supported "
                                   f"(supported: {', '.join(KIND_DEFAULTS)})")
        self.model = model
        defaults = KIND_DEFAULTS[model]
        self.pre_name = md.get(KEY + "pre") or "default"
        self.pre: PreTokenizer | None = None
        add_bos = defaults["add_bos"]
        self.clean_spaces = defaults["clean_spaces"]
        self.ignore_merges = False
        ids: dict[str, int | None] = dict(defaults["ids"])
        if model == BPE:
            self.pre = pre_tokenizer(md.get(KEY + "pre"), source)
            self.clean_spaces = self.pre.clean_spaces
            self.ignore_merges = self.pre.ignore_merges
            add_bos = self.pre.add_bos
            if not self.pre.has_bos:
                ids.pop("bos", None)
        self.add_space_prefix = bool(md.get(KEY + "add_space_prefix", defaults["add_space_prefix"]))

        # ---- vocabulary
        tokens = md.get(KEY + "tokens")
        if tokens is None:
            raise FormatError(f"{source}: no token list (metadata '{KEY}tokens' is missing)")
        tokens = list(tokens)
        n = len(tokens)
        if n == 0 or not isinstance(tokens[0], str):
            raise FormatError(f"{source}: '{KEY}tokens' must be a non-empty array of strings")
        self.token_to_id = dict(zip(tokens, range(n)))
        if "" in self.token_to_id:  # llama.cpp names empty tokens "[EMPTY_<id>]"
            tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
            self.token_to_id = dict(zip(tokens, range(n)))
        if len(self.token_to_id) != n:
            raise FormatError(f"{source}: '{KEY}tokens' has duplicate entries")
        self.tokens = tokens
        scores = md.get(KEY + "scores")
        types = md.get(KEY + "token_type")
        for what, arr in (("scores", scores), ("token_type", types)):
            if arr is not None and len(arr) < n:
                raise FormatError(f"{source}: '{KEY}{what}' has {len(arr)} entries for {n} tokens")
        self.scores = np.asarray(scores, dtype=np.float32)[:n].tolist() if scores is not None else [0.0] * n
        if types is None:
            self.attrs = [NORMAL] * n
        else:
            t = np.asarray(types, dtype=np.int64)[:n]
            known = (t >= 0) & (t < len(TOKEN_TYPE_ATTR))
            type_attr = np.array(TOKEN_TYPE_ATTR, dtype=np.int64)
            self.attrs = np.where(known, type_attr[np.where(known, t, 0)], 0).tolist()

        self.bpe_ranks: dict[tuple[str, str], int] = {}
        if model == BPE:
            merges = md.get(KEY + "merges")
            if merges is None:
                raise FormatError(f"{source}: byte-level BPE vocabulary without '{KEY}merges'")
            for rank, merge in enumerate(_as_list(merges)):
                cut = merge.find(" ", 1)
                pair = (merge[:cut], merge[cut + 1:]) if cut >= 0 else ("", "")
                self.bpe_ranks.setdefault(pair, rank)

        # ---- special ids: defaults (dropped when out of range), then metadata
        self.special: dict[str, int | None] = {role: None for role in SPECIAL_ID_KEYS}
        for role, tid in ids.items():
            self.special[role] = tid if 0 <= tid < n else None
        for role, key in (*SPECIAL_ID_KEYS.items(), *DEPRECATED_ID_KEYS):
            value = md.get(key)
            if value is not None and 0 <= int(value) < n:
                self.special[role] = int(value)
        self.add_bos = bool(md.get(ADD_TOKEN_KEYS["bos"], add_bos))
        self.add_eos = bool(md.get(ADD_TOKEN_KEYS["eos"], False))

        self._derive_roles_and_attrs(md)
        self._cache: _WordCache = _WordCache()
        self._pieces: dict[int, bytes] = {}
        if model == SPM:
            self._spm_cut = self._spm_cut_pattern()
            self._neg_scores = (-np.asarray(self.scores, np.float64)).tolist()  # heap order: best score first
        else:
            self._split = splitter(self.pre.regexes).split

    def _derive_roles_and_attrs(self, md: Mapping[str, Any]) -> None:
        """End-of-generation set, roles found by text and attribute fixes (llama_vocab::load)."""
        attrs, text_ids = self.attrs, self.token_to_id

        def force_control(tid: int) -> None:
            attrs[tid] |= CONTROL

        # llama.cpp takes whichever candidate its hash map yields first; we take the first in
        # ROLE_TEXTS order (e.g. "<|eot_id|>" before "<|end_of_text|>"), which is deterministic.
        for role, texts in ROLE_TEXTS.items():
            if self.special[role] is None:
                for text in texts:
                    if text in text_ids:
                        self.special[role] = text_ids[text]
                        force_control(text_ids[text])
                        break

        # (numpy finds the candidates: a Python pass over a 262k vocabulary costs ~50 ms at load)
        for tid in np.flatnonzero(np.asarray(attrs) & CONTROL).tolist():
            if "unused" in self.tokens[tid]:
                attrs[tid] |= UNUSED

        eog = {self.special[r] for r in ("fim_pad", "fim_rep", "fim_sep") if self.special[r] is not None}
        for text in EOG_TEXTS:
            tid = text_ids.get(text)
            if tid is not None:
                eog.add(tid)
                force_control(tid)
        for text in ALWAYS_RENDERED_TEXTS:
            if text in text_ids:
                attrs[text_ids[text]] = USER_DEFINED
        for role in ("eos", "eot", "eom"):
            if self.special[role] is not None:
                eog.add(self.special[role])

        eog_texts = {self.tokens[t]: t for t in eog}
        has = eog_texts.__contains__
        if has("<|end|>") and ((has("<|return|>") and has("<|call|>"))
                               or ((has("<|call|>") or has("<|calls|>")) and has("<|flush|>"))):
            end = eog_texts["<|end|>"]
            eog.discard(end)
            attrs[end] = USER_DEFINED
        if has("</s>") and (has("<|tool_response>") or has("<|plamo:eos|>")):
            eog.discard(eog_texts["</s>"])
            attrs[eog_texts["</s>"]] = NORMAL
        self.eog_ids = frozenset(eog)

        # Special tokens, longest text first (ties: lower id first).
        special = np.flatnonzero(np.asarray(attrs) & SPECIAL_ATTRS).tolist()
        special.sort(key=lambda i: -len(self.tokens[i].encode("utf-8", "surrogateescape")))
        self._special_order = special
        self._user_defined_order = [i for i in special if not attrs[i] & HIDDEN_ATTRS]

        # Attribute fixes by model name (lower-cased general.name) and pre-tokenizer.
        name = str(md.get("general.name", "")).lower()
        pre = str(md.get(KEY + "pre", ""))
        arch = str(md.get("general.architecture", ""))

        def set_attr(text: str, flag: int, on: bool) -> None:
            tid = text_ids.get(text)
            if tid is not None:
                attrs[tid] = (attrs[tid] | flag) if on else (attrs[tid] & ~flag)

        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            set_attr("<mask>", LSTRIP, True)
        elif "phi-3" in name or "phi3" in name:
            for tid in special:
                attrs[tid] |= RSTRIP
            set_attr("</s>", RSTRIP, True)
            for text in ("<unk>", "<s>", "<|endoftext|>"):
                set_attr(text, RSTRIP, False)
        elif "modern-bert" in name:
            set_attr("[MASK]", LSTRIP, True)

    def __repr__(self) -> str:
        pre = f", pre={self.pre_name!r}" if self.model == BPE else ""
        return (f"Tokenizer({self.model!r}{pre}, n_vocab={self.n_vocab}, bos={self.bos_id}, "
                f"eos={self.eos_id}, add_bos={self.add_bos})")

    # ---- properties ------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def bos_id(self) -> int | None:
        return self.special["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.special["eos"]

    @property
    def eot_id(self) -> int | None:
        return self.special["eot"]

    @property
    def eom_id(self) -> int | None:
        return self.special["eom"]

    @property
    def unk_id(self) -> int | None:
        return self.special["unk"]

    @property
    def pad_id(self) -> int | None:
        return self.special["pad"]

    def is_eog(self, tid: int) -> bool:
        """True for every token that ends generation (eos, eot, <end_of_turn>, <|im_end|>, ...)."""
        return tid in self.eog_ids

    def token_text(self, tid: int) -> str:
        return self.tokens[tid]

    def token_attr(self, tid: int) -> TokenAttr:
        return _attr_flag(self.attrs[tid])

    def is_control(self, tid: int) -> bool:
        return bool(self.attrs[tid] & CONTROL)

    def ids_with_attr(self, mask: TokenAttr | int) -> list[int]:
        """Ids of the tokens having any attribute in `mask`, e.g. CONTROL | USER_DEFINED
        (fast: use this rather than token_attr() over a 262k vocabulary)."""
        mask = int(mask)
        return [i for i, a in enumerate(self.attrs) if a & mask]

    # ---- tokenize --------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`. add_special: BOS/EOS as the metadata asks (add_bos_token /
        add_eos_token). parse_special: control tokens written in the text (e.g. "<start_of_turn>")
        become those tokens; user-defined tokens are always recognised."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadInputError(f"text to tokenize is not valid Unicode: {e.reason} "
                                f"(U+{ord(text[e.start]):04X} at character {e.start})") from None
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self._required("bos"))
        is_prev_special = True  # SPM: a space is prepended to text at the start or after a special
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                is_prev_special = True
            elif self.model == SPM:
                if self.add_space_prefix and is_prev_special:
                    frag = " " + frag
                out.extend(self._spm(frag))
                is_prev_special = False
            else:
                out.extend(self._bpe(frag))
        if add_special and self.add_eos:
            out.append(self._required("eos"))
        return out

    def _required(self, role: str) -> int:
        tid = self.special[role]
        if tid is None:
            raise FormatError(f"{self.source}: the tokenizer asks to add a {role.upper()} token "
                              f"but has none")
        return tid

    def _specials_in(self, text: str, parse_special: bool) -> list[int]:
        """The special tokens (in cutting order) whose text occurs in `text`. Only these can match
        in any fragment, since fragments are pieces of `text`."""
        order = self._special_order if parse_special else self._user_defined_order
        tokens = self.tokens
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
        tokens, attrs = self.tokens, self.attrs
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

    def _spm_cut_pattern(self) -> re.Pattern:
        """Where SPM text may be cut into independent pieces: before a "▁" whose left neighbour
        is never followed by "▁" inside a token (so no token can span the cut)."""
        joined = "\x00".join(self.tokens)
        if joined.count("\x00") == len(self.tokens) - 1:  # no token holds the separator
            # the character before each "▁": the last of every piece but the final one when split
            # at "▁" (str.split runs in C: ~3x re.findall on a 262k-token vocabulary)
            pieces = joined.split(SPACE_MARK)
            glue = {piece[-1] for piece in pieces[:-1] if piece}
            if not all(pieces[1:-1]):  # an empty piece between two marks: "▁" precedes a "▁"
                glue.add(SPACE_MARK)
            glue.discard("\x00")
        else:
            glue = {t[i - 1] for t in self.tokens for i in range(1, len(t)) if t[i] == SPACE_MARK}
        if glue:
            cls = "".join(sorted(re.escape(c) for c in glue))
            return re.compile(f"(?<![{cls}])(?={SPACE_MARK})")
        return re.compile(f"(?={SPACE_MARK})")

    def _spm(self, text: str) -> list[int]:
        text = text.replace(" ", SPACE_MARK)
        out: list[int] = []
        cache = self._cache
        for piece in self._spm_cut.split(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._spm_piece(piece)
                cache.put(piece, ids)
            out.extend(ids)
        return out

    def _spm_piece(self, text: str) -> list[int]:
        vocab = self.token_to_id
        out = []
        for sym in _merge(text, vocab, self._neg_scores, None):
            tid = vocab.get(sym)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(self._byte_token(b) for b in sym.encode("utf-8", "surrogateescape"))
        return out

    def _byte_token(self, b: int) -> int:
        tid = self.token_to_id.get(f"<0x{b:02X}>")
        if tid is None:
            tid = self.token_to_id.get(bytes([b]).decode("utf-8", "surrogateescape"))
        if tid is None:
            raise UnsupportedError(f"{self.source}: text needs byte 0x{b:02X} but the vocabulary has "
                                   f"no byte token for it")
        return tid

    # Byte-level BPE -------------------------------------------------------------------------------

    def _bpe(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for word in self._split(text):
            word = byte_encode(word)
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                cache.put(word, ids)
            out.extend(ids)
        return out

    def _bpe_word(self, word: str) -> list[int]:
        vocab = self.token_to_id
        if self.ignore_merges and word in vocab:
            return [vocab[word]]
        ranks = self.bpe_ranks
        out = []
        for sym in _merge(word, None, None, ranks):
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

    # ---- detokenize ------------------------------------------------------------------------------

    def token_to_piece(self, tid: int, special: bool = True, lstrip: bool = False) -> bytes:
        """The bytes token `tid` stands for. special=False: control/unknown tokens give b"".
        lstrip: drop one leading space (llama.cpp strips it from the first token of a text when
        the tokenizer prepends one)."""
        if not 0 <= tid < len(self.tokens):
            raise IndexError(f"token id {tid} is outside the vocabulary (0..{len(self.tokens) - 1})")
        if not special and self.attrs[tid] & HIDDEN_ATTRS:
            return b""
        piece = self._pieces.get(tid)
        if piece is None:
            piece = self._pieces[tid] = self._piece(tid)
        if lstrip and piece[:1] == b" ":
            piece = piece[1:]
        return piece

    def _piece(self, tid: int) -> bytes:
        attr, text = self.attrs[tid], self.tokens[tid]
        if attr & (HIDDEN_ATTRS | USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if attr & NORMAL:
            if self.model == SPM:
                return text.replace(SPACE_MARK, " ").encode("utf-8", "surrogateescape")
            return byte_decode(text)
        if attr & BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused / undefined tokens render as nothing

    def detokenize_bytes(self, ids: Iterable[int], remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        """llama.cpp's llama_detokenize: pieces concatenated; the first piece loses its leading
        space when the tokenizer prepends one; remove_special drops a leading BOS / trailing EOS
        that add_special would have added; unparse_special renders control tokens' text; byte-level
        BPE vocabularies with clean_spaces tidy " ," " ." " 's" etc."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for tid in ids:
            parts.append(self.token_to_piece(tid, special=unparse_special, lstrip=remove_space))
            remove_space = False
        text = b"".join(parts)
        if self.clean_spaces:
            text = clean_up_spaces(text)
        return text

    def detokenize(self, ids: Iterable[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        """As detokenize_bytes, decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.detokenize_bytes(ids, remove_special, unparse_special).decode("utf-8", "replace")

    def stream(self, special: bool = False) -> "StreamingDetokenizer":
        """A detokenizer fed one id at a time (for generated text)."""
        return StreamingDetokenizer(self, special)


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
    the end for anything still pending.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, tid: int) -> str:
        return self._decoder.decode(self.tokenizer.token_to_piece(tid, special=self.special))

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
