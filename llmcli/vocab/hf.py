"""Hugging Face tokenizer files -> GGUF tokenizer metadata, as llama.cpp's converter writes it.

Three readers, each returning a `VocabMetadata` (ordered GGUF keys and values):

* `sentencepiece_vocab` - `tokenizer.model` (+ added tokens from added_tokens.json and
  tokenizer_config.json) -> `tokenizer.ggml.model = "llama"`: tokens, scores, token types.
* `bpe_vocab` - `tokenizer.json` of a byte-level BPE tokenizer -> `"gpt2"`: tokens, token types,
  merges, and `tokenizer.ggml.pre` identified by llama.cpp's check-text hash (see bpe_hashes.py).
* `special_vocab` - special token ids, add_bos/add_eos/add_sep, chat template, normalizer flags,
  read from tokenizer.json's post-processor, tokenizer_config.json and config.json in the same
  order and with the same precedence as gguf-py's `SpecialVocab`.

The order of the keys matters: llama.cpp writes metadata in insertion order, and we aim at
byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, FormatError, UnsupportedError
from ..gguf.constants import ValueType
from ..gguf.reader import MetadataValue
from .bpe_hashes import CHECK_TEXT, PRE_TOKENIZER_BY_HASH
from .tokens import ADD_TOKEN_KEYS, BPE, SPACE_MARK, SPECIAL_ID_KEYS, TokenType


DEFAULT_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


@dataclass
class VocabMetadata:
    """Ordered GGUF tokenizer keys; `n_tokens` is the length of `tokenizer.ggml.tokens` if set."""

    entries: dict[str, MetadataValue] = field(default_factory=dict)
    n_tokens: int | None = None

    def put(self, key: str, mv: MetadataValue) -> None:
        self.entries[key] = mv

    def string(self, key: str, value: str) -> None:
        self.put(key, MetadataValue(ValueType.STRING, value))

    def extend(self, other: "VocabMetadata") -> None:
        for key, mv in other.entries.items():
            self.put(key, mv)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except OSError as e:
        raise BadInputError(f"{path}: cannot read ({e.strerror})") from None


def _optional_json(path: Path) -> Any:
    return _read_json(path) if path.is_file() else None


def looks_special(token: str) -> bool:
    """Added tokens some models forget to flag as special (llama.cpp treats them as CONTROL)."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _token_list(tokens: list[str], types: list[int], scores: list[float] | None) -> VocabMetadata:
    out = VocabMetadata(n_tokens=len(tokens))
    out.put("tokenizer.ggml.tokens", MetadataValue(ValueType.ARRAY, tokens, ValueType.STRING))
    if scores is not None:
        out.put("tokenizer.ggml.scores",
                MetadataValue(ValueType.ARRAY, np.asarray(scores, dtype="<f4"), ValueType.FLOAT32))
    out.put("tokenizer.ggml.token_type",
            MetadataValue(ValueType.ARRAY, np.asarray(types, dtype="<i4"), ValueType.INT32))
    return out


# -- SentencePiece ---------------------------------------------------------------------------------


def sentencepiece_vocab(model_dir: Path, vocab_size: int | None, *, added_tokens: str = "llama") -> VocabMetadata:
    """`tokenizer.model` -> tokens/scores/types, padded or cut to `vocab_size` (config.json's).

    `added_tokens` picks how tokenizer_config.json's added tokens are typed: "llama" (llama.cpp's
    common rule: special or special-looking -> CONTROL, else USER_DEFINED with spaces
    pre-normalized) or "phi3" (Phi-3's rule: CONTROL only when flagged special, tokenizer.json's
    added tokens applied too).
    """
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    if not path.is_file():
        raise BadInputError(f"{model_dir}: no tokenizer.model (SentencePiece tokenizer expected)")
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (RuntimeError, OSError) as e:
        raise FormatError(f"{path}: not a SentencePiece model ({e})") from None

    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [int(TokenType.UNUSED)] * n
    for i in range(min(sp.vocab_size(), n)):
        tokens[i] = sp.IdToPiece(i)
        scores[i] = sp.GetScore(i)
        if sp.IsUnknown(i):
            types[i] = TokenType.UNKNOWN
        elif sp.IsControl(i):
            types[i] = TokenType.CONTROL
        elif sp.IsUnused(i):
            types[i] = TokenType.UNUSED
        elif sp.IsByte(i):
            types[i] = TokenType.BYTE
        else:
            types[i] = TokenType.NORMAL

    added = _optional_json(model_dir / "added_tokens.json") or {}
    for text, tid in added.items():
        if tid < n:
            tokens[tid], scores[tid], types[tid] = text, -1000.0, TokenType.USER_DEFINED

    config = _optional_json(model_dir / "tokenizer_config.json") or {}
    decoder = config.get("added_tokens_decoder", {})
    if added_tokens == "phi3":
        entries = [(int(k), v) for k, v in decoder.items()]
        tok_json = _optional_json(model_dir / "tokenizer.json") or {}
        entries += [(int(v["id"]), v) for v in tok_json.get("added_tokens", [])]
        for tid, data in entries:
            tokens[tid], scores[tid] = data["content"], -1000.0
            types[tid] = TokenType.CONTROL if data.get("special") else TokenType.USER_DEFINED
    else:
        for key, data in decoder.items():
            tid, text = int(key), data["content"]
            if tid >= n:
                continue
            if data.get("special") or looks_special(text):
                types[tid] = TokenType.CONTROL
            else:
                text = text.replace(SPACE_MARK, " ")
                types[tid] = TokenType.USER_DEFINED
            tokens[tid], scores[tid] = text, -1000.0
    return _token_list(tokens, [int(t) for t in types], scores)


# -- SentencePiece-style tokenizer.json without tokenizer.model -----------------------------------

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def is_llama_style_bpe(tokenizer: dict) -> bool:
    """A tokenizer.json converted from SentencePiece (BPE with byte fallback, Sequence decoder),
    as opposed to a byte-level BPE (Llama 3 style: ignore_merges, no byte fallback)."""
    model = tokenizer.get("model") or {}
    llama3 = model.get("type") == "BPE" and model.get("ignore_merges", False) and not model.get("byte_fallback", True)
    return (not llama3 and model.get("type") == "BPE" and bool(model.get("byte_fallback", False))
            and (tokenizer.get("decoder") or {}).get("type") == "Sequence")


def llama_hf_vocab(model_dir: Path) -> VocabMetadata:
    """tokenizer.json of a SentencePiece-style BPE -> `llama` tokens, as llama.cpp's LlamaHfVocab:
    base vocabulary first (score -1000; <0xNN> BYTE, special tokens CONTROL, else NORMAL), then the
    added tokens beyond it (special -> CONTROL, others USER_DEFINED). Special tokens are the ones
    tokenizer_config.json names (bos/eos/unk/sep/pad/cls/mask and the extra/additional lists)."""
    path = model_dir / "tokenizer.json"
    tok = _read_json(path)
    vocab: dict[str, int] = dict((tok.get("model") or {}).get("vocab") or {})
    n_base = len(vocab)
    added = [(t["content"], int(t["id"])) for t in tok.get("added_tokens", [])]
    full = dict(vocab)
    full.update(dict(added))
    config = _optional_json(model_dir / "tokenizer_config.json") or {}

    def content(entry: Any) -> str | None:
        entry = entry.get("content") if isinstance(entry, dict) else entry
        return entry if isinstance(entry, str) else None

    specials = [content(config.get(k)) for k in _NAMED_SPECIALS]
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if isinstance(config.get(key), list):
            specials += [content(e) for e in config[key]]
    special_ids = {full[t] for t in specials if t is not None and t in full}
    by_id = {i: t for t, i in full.items()}
    tokens, types = [], []
    for i in range(n_base):
        text = by_id[i]
        tokens.append(text)
        types.append(TokenType.BYTE if _BYTE_TOKEN.fullmatch(text) else
                     TokenType.CONTROL if i in special_ids else TokenType.NORMAL)
    for text, i in sorted(((t, i) for t, i in added if i >= n_base), key=lambda x: x[1]):
        tokens.append(text)
        types.append(TokenType.CONTROL if text in specials and i in special_ids else TokenType.USER_DEFINED)
    return _token_list(tokens, [int(t) for t in types], [-1000.0] * len(tokens))


# -- byte-level BPE --------------------------------------------------------------------------------


def pre_tokenizer_name(model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, from the check-text hash."""
    digest = bpe_check_hash(model_dir)
    name = PRE_TOKENIZER_BY_HASH.get(digest)
    if name is None:
        known = ", ".join(sorted(set(PRE_TOKENIZER_BY_HASH.values())))
        raise UnsupportedError(
            f"{model_dir / 'tokenizer.json'}: BPE pre-tokenizer not recognized (check-text hash {digest[:16]}...); "
            f"choose one with --pre NAME, one of: {known}")
    return name


def bpe_check_hash(model_dir: Path) -> str:
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises plain Exceptions
        raise FormatError(f"{path}: cannot load tokenizer ({e})") from None
    ids = tok.encode(CHECK_TEXT).ids
    return hashlib.sha256(str(ids).encode()).hexdigest()


def bpe_vocab(model_dir: Path, vocab_size: int | None, pre: str | None = None) -> VocabMetadata:
    """tokenizer.json (byte-level BPE) -> gpt2 model, pre-tokenizer name, tokens and types."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise BadInputError(f"{model_dir}: no tokenizer.json (byte-level BPE tokenizer expected)")
    data = _read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedError(f"{path}: tokenizer model '{model.get('type')}' is not a BPE vocabulary")
    pre_name = pre or pre_tokenizer_name(model_dir)

    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    n = vocab_size if vocab_size is not None else len(vocab)
    if vocab and max(vocab.values()) >= n:
        raise BadInputError(f"{path}: token id {max(vocab.values())} does not fit vocab_size {n} of config.json")
    by_id = {i: s for s, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        t = added.get(text)
        if t is None:
            types.append(TokenType.NORMAL)
        elif t.get("special") or looks_special(text):
            types.append(TokenType.CONTROL)
        else:
            text = text.replace(SPACE_MARK, " ")
            types.append(TokenType.USER_DEFINED)
        tokens.append(text)
    out = VocabMetadata()
    out.string("tokenizer.ggml.model", BPE)
    out.string("tokenizer.ggml.pre", pre_name)
    out.extend(_token_list(tokens, types, None))
    out.n_tokens = n
    return out


# -- special tokens, add_*_token, chat template ---------------------------------------------------


def _merges(tokenizer: dict, path: Path) -> list[str]:
    merges = (tokenizer.get("model") or {}).get("merges")
    if not isinstance(merges, list) or not merges:
        return []
    if isinstance(merges[0], str):
        return merges
    if isinstance(merges[0], list) and len(merges[0]) == 2:
        # tokenizers >= 0.20 stores pairs; llama.cpp joins them with a space, spaces inside
        # a part shifted by 256 as byte-level BPE does.
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    raise FormatError(f"{path}: unknown merges format")


class _SpecialVocab:
    """gguf-py's SpecialVocab logic, reimplemented: which ids and flags end up in the GGUF."""

    def __init__(self, model_dir: Path, n_vocab: int | None, load_merges: bool,
                 special_types: tuple[str, ...] = DEFAULT_SPECIAL_TYPES):
        self.dir = model_dir
        self.n_vocab = n_vocab
        self.types = tuple(special_types)
        self.ids: dict[str, int] = {}
        self.add: dict[str, bool] = {}
        self.merges: list[str] = []
        self.chat_template: str | list | None = None
        self.lowercase: bool | None = None
        self.strip_accents: bool | None = None
        self._from_tokenizer_files(load_merges)
        self._from_config_json()

    def _set_id(self, kind: str, tid: Any) -> None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise BadInputError(f"{self.dir}: invalid {kind} token id {tid}")
        if (self.n_vocab is None or tid < self.n_vocab) and kind not in self.ids:
            self.ids[kind] = tid

    def _normalizer(self, norm: dict) -> None:
        kind = norm.get("type")
        if kind == "Lowercase":
            self.lowercase = True
        elif kind == "StripAccents":
            self.strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in norm:
                self.lowercase = norm["lowercase"]
            if "strip_accents" in norm:
                self.strip_accents = norm["strip_accents"]
        elif kind == "Sequence":
            for n in norm.get("normalizers", []):
                self._normalizer(n)

    def _from_tokenizer_files(self, load_merges: bool) -> None:
        tok_path = self.dir / "tokenizer.json"
        tokenizer = _optional_json(tok_path)
        added_tokens = []
        if tokenizer:
            if load_merges:
                self.merges = _merges(tokenizer, tok_path)
            if normalizer := tokenizer.get("normalizer"):
                self._normalizer(normalizer)
            added_tokens = tokenizer.get("added_tokens", [])
        config = _optional_json(self.dir / "tokenizer_config.json")
        if tokenizer:
            self._post_processor(tokenizer, config)
        if not config:
            return
        template = None
        jinja = self.dir / "chat_template.jinja"
        json_template = self.dir / "chat_template.json"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
            extra = sorted((self.dir / "additional_chat_templates").glob("*.jinja"))
            if extra:
                template = [{"name": "default", "template": template}] + [
                    {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        elif json_template.is_file():
            template = (_read_json(json_template) or {}).get("chat_template")
        template = config.get("chat_template", template)
        if template is None or isinstance(template, (str, list)):
            self.chat_template = template
        for kind in self.types:
            add_entry = config.get(f"add_{kind}_token")
            if isinstance(add_entry, bool) and kind not in self.add:
                self.add[kind] = add_entry
            entry = config.get(f"{kind}_token")
            if isinstance(entry, dict):
                entry = entry.get("content")
            if not isinstance(entry, str):
                continue
            tid = next((t.get("id") for t in added_tokens if t.get("content") == entry), None)
            self._set_id(kind, tid)

    def _post_processor(self, tokenizer: dict, config: dict | None) -> None:
        cfg = config or {}
        bos, cls, eos, sep = (cfg.get(k) for k in ("bos_token", "cls_token", "eos_token", "sep_token"))
        if not bos and cls and config:
            config["bos_token"] = bos = cls
        if not eos and sep and config:
            config["eos_token"] = eos = sep
        post = tokenizer.get("post_processor")
        if not post:
            return
        for proc in post.get("processors", [post]):
            kind = proc.get("type")
            if kind == "ByteLevel":
                self.add.setdefault("bos", False)
                self.add.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.add["bos"] = self.add["eos"] = self.add["sep"] = True
                if not cls and config:
                    config["cls_token"] = cls = proc.get("cls", [bos])[0]
                if not sep and config:
                    config["sep_token"] = sep = proc.get("sep", [eos])[0]
            elif kind == "TemplateProcessing":
                bos, cls, eos, sep = self._template(proc, config, bos, cls, eos, sep)

    def _template(self, proc: dict, config: dict | None, bos, cls, eos, sep):
        """Crude reading of a TemplateProcessing: a leading special = BOS, trailing = EOS, pair separator."""
        single, pair = proc.get("single", []), proc.get("pair", [])
        first = last = None
        if len(single) > 1:
            if first := single[0].get("SpecialToken", {}).get("id"):
                if not config:
                    bos = first
                elif first not in (bos, cls):
                    if not bos:
                        config["bos_token"] = bos = first
                    if not cls:
                        config["cls_token"] = cls = first
                self.add["bos"] = first in (bos, cls)
            if last := single[-1].get("SpecialToken", {}).get("id"):
                if not config:
                    eos = last
                elif last != eos:
                    if "eot" not in self.types:
                        self.types += ("eot",)
                        config["eot_token"] = eos
                    elif "eom" not in self.types:
                        self.types += ("eom",)
                        config["eom_token"] = eos
                    config["eos_token"] = eos = last
                self.add["eos"] = last == eos
        if pair:
            start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
            stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
            pair = pair[slice(start, stop)]
            if pair:
                a = pair[0].get("Sequence", {}).get("id")
                b = pair[-1].get("Sequence", {}).get("id")
                if a == "A" and b == "B" and (middle := pair[1:-1]):
                    add_sep = False
                    if entry := middle[0].get("SpecialToken", {}).get("id"):
                        if entry in (sep, eos) and not last:
                            add_sep = True
                    if len(middle) == 2:
                        if entry := middle[1].get("SpecialToken", {}).get("id"):
                            if entry in (sep, eos):
                                add_sep = True
                    self.add["sep"] = add_sep
                    if add_sep and not sep and config:
                        config["sep_token"] = eos
        return bos, cls, eos, sep

    def _named_templates(self, out: VocabMetadata) -> None:
        """A list of {name, template}: `default` -> tokenizer.chat_template, others ->
        tokenizer.chat_template.<name> + the tokenizer.chat_templates name list. (llama.cpp lists
        the names in Python set order, which varies between runs; we keep first-seen order.)"""
        default, names = None, []
        for choice in self.chat_template:
            name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
            template = choice.get("template")
            if not name or template is None:
                continue
            if name == "default":
                default = template
            else:
                if name not in names:
                    names.append(name)
                out.string(f"tokenizer.chat_template.{name}", template)
        if names:
            out.put("tokenizer.chat_templates", MetadataValue(ValueType.ARRAY, names, ValueType.STRING))
        if default is not None:
            out.string("tokenizer.chat_template", default)

    def _from_config_json(self) -> None:
        config = _optional_json(self.dir / "config.json") or {}
        for kind in self.types:
            tid = config.get(f"{kind}_token_id")
            if tid is None and "text_config" in config:
                tid = config["text_config"].get(f"{kind}_token_id")
            self._set_id(kind, tid)

    def metadata(self) -> VocabMetadata:
        out = VocabMetadata()
        if self.merges:
            out.put("tokenizer.ggml.merges", MetadataValue(ValueType.ARRAY, self.merges, ValueType.STRING))
        for kind, tid in self.ids.items():
            if kind in SPECIAL_ID_KEYS:
                out.put(SPECIAL_ID_KEYS[kind], MetadataValue(ValueType.UINT32, tid))
        for kind, value in self.add.items():
            if kind in ADD_TOKEN_KEYS:
                out.put(ADD_TOKEN_KEYS[kind], MetadataValue(ValueType.BOOL, bool(value)))
        if isinstance(self.chat_template, str):
            out.string("tokenizer.chat_template", self.chat_template)
        elif self.chat_template is not None:
            self._named_templates(out)
        if self.lowercase is not None:
            out.put("tokenizer.ggml.normalizer.lowercase", MetadataValue(ValueType.BOOL, bool(self.lowercase)))
        if self.strip_accents is not None:
            out.put("tokenizer.ggml.normalizer.strip_accents",
                    MetadataValue(ValueType.BOOL, bool(self.strip_accents)))
        return out


def special_vocab(model_dir: Path, n_vocab: int | None, *, load_merges: bool = False,
                  special_types: tuple[str, ...] = DEFAULT_SPECIAL_TYPES) -> VocabMetadata:
    """Merges, special token ids, add_*_token flags, chat template - in llama.cpp's key order."""
    return _SpecialVocab(model_dir, n_vocab, load_merges, special_types).metadata()


def has_tokenizer(model_dir: Path) -> bool:
    return (model_dir / "tokenizer.model").is_file() or (model_dir / "tokenizer.json").is_file()
