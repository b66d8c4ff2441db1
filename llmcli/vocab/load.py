"""A vocabulary as llama.cpp's `llama_vocab::load` reads it from GGUF `tokenizer.*` metadata.

Tokens, scores and attributes; merge ranks (byte-level BPE); the special-token ids (defaults per
vocabulary kind, then the metadata, then roles found by token text); the end-of-generation set;
the special tokens in the order they are cut out of text; and the attribute fixes llama.cpp makes
by model name (phi-3's right-strip, ...). `encode` and `decode` work from what this holds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from ..errors import FormatError, UnsupportedError
from .pretokenizers import PreTokenizer, pre_tokenizer
from .tokens import (ADD_TOKEN_KEYS, BPE, CONTROL, DEPRECATED_ID_KEYS, HIDDEN_ATTRS, KEY, LSTRIP,
                     NORMAL, RSTRIP, SPECIAL_ATTRS, SPECIAL_ID_KEYS, SPM, TOKEN_TYPE_ATTR, UNUSED,
                     USER_DEFINED, TokenAttr)

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


@lru_cache(maxsize=None)
def _attr_flag(value: int) -> TokenAttr:
    return TokenAttr(value)  # building an IntFlag is slow; there are only a few distinct values


def _role_id(role: str) -> property:
    """A read-only attribute: the id of the `role` special token, None when there is none."""
    return property(lambda self: self.special[role], doc=f"The {role} token's id (None: no such token).")


def _as_list(value: Any) -> list:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


class Vocab:
    """The vocabulary and its rules, read exactly as llama.cpp (commit 0c1e570) reads them."""

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, reader):
        """From an open `GGUFReader`."""
        wanted = {"general.name", "general.architecture"}
        md = {}
        for key, mv in reader.metadata.items():
            if key.startswith(KEY) or key in wanted:
                md[key] = mv.value
        return cls.from_metadata(md, source=str(reader.path))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "metadata"):
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

        # Special tokens in cutting order: longest text first (ties: lower id first); the
        # user-defined ones are cut even when control tokens are not parsed.
        special = np.flatnonzero(np.asarray(attrs) & SPECIAL_ATTRS).tolist()
        special.sort(key=lambda i: -len(self.tokens[i].encode("utf-8", "surrogateescape")))
        self.special_order = special
        self.user_defined_order = [i for i in special if not attrs[i] & HIDDEN_ATTRS]

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
        return (f"{type(self).__name__}({self.model!r}{pre}, n_vocab={self.n_vocab}, bos={self.bos_id}, "
                f"eos={self.eos_id}, add_bos={self.add_bos})")

    # ---- queries ---------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    bos_id = _role_id("bos")
    eos_id = _role_id("eos")
    eot_id = _role_id("eot")
    eom_id = _role_id("eom")
    unk_id = _role_id("unk")
    pad_id = _role_id("pad")

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
