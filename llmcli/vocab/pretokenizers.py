"""Byte-level BPE pre-tokenizers: `tokenizer.ggml.pre` name -> the regexes that cut text into words.

A byte-level BPE model never merges across a word boundary, and the boundaries come from a list of
regexes applied one after another (each one splits the pieces the previous one left). The regexes
are written the way the model's `tokenizer.json` writes them, with Unicode classes `\\p{L}` (letter),
`\\p{N}` (number), `\\p{P}`, `\\p{S}`, `\\p{M}`. Python's `re` has no `\\p{..}`, so we use the same
trick as llama.cpp's general path: every code point is first *collapsed* to one representative
character of its class (ASCII stays itself; a non-ASCII letter becomes U+00D2, a number U+00D1, ...;
non-ASCII white space becomes U+000B) and `\\p{X}` becomes a character class holding that
representative plus the ASCII members of the class. The match offsets on the collapsed text are the
offsets on the real text, because collapsing maps one code point to one character.

llama.cpp hand-codes the GPT-2, Llama-3, Qwen2 and Qwen3.5 patterns (unicode.cpp); those hand-written
splitters implement exactly these regexes, so the regex route gives the same words. Every name in
the table is checked against llama.cpp's ids (tests/test_tokenizer.py: a 100 KB text and 20,000
random code points from every plane).

The class of a code point is its Unicode 15.1 general category (the version llama.cpp's tables
were generated from), read from the pinned table in `unicode_classes` rather than from the running
Python's `unicodedata`, whose Unicode version changes with the interpreter. White space is the
Unicode White_Space property, as in llama.cpp.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import lru_cache

from ..errors import UnsupportedError
from . import unicode_classes

# -- code point classes ---------------------------------------------------------------------------

# Classes as unicode_classes writes them: the general category's first letter, "U" unassigned.
NUMBER, LETTER, PUNCTUATION, MARK, SYMBOL, SEPARATOR, CONTROL, UNDEFINED = (
    "N", "L", "P", "M", "S", "Z", "C", "U")

_RUN_STARTS = [int(x, 16) for x in unicode_classes.RUN_STARTS.split()]
_RUN_CLASSES = "".join(unicode_classes.RUN_CLASSES.split())

# Unicode's White_Space property (PropList.txt).
WHITE_SPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                         0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

# The representative each class collapses to (anything else non-ASCII: U+00D0, white space: U+000B).
_COLLAPSED = {NUMBER: 0xD1, LETTER: 0xD2, PUNCTUATION: 0xD3, MARK: 0xD4, SYMBOL: 0xD5}
_COLLAPSED_OTHER = 0xD0
_COLLAPSED_SPACE = 0x0B

# `\p{..}` names the regexes use -> class. The letter subclasses all collapse to "letter", as in
# llama.cpp (so a pattern telling upper from lower case only does so for ASCII).
_PROPERTY_CLASS = {"N": NUMBER, "L": LETTER, "P": PUNCTUATION, "M": MARK, "S": SYMBOL,
                   "Lu": LETTER, "Ll": LETTER, "Lt": LETTER, "Lm": LETTER, "Lo": LETTER}


def codepoint_class(cp: int) -> str:
    """NUMBER, LETTER, ... or UNDEFINED for an unassigned code point (Unicode 15.1)."""
    return _RUN_CLASSES[bisect.bisect_right(_RUN_STARTS, cp) - 1]


class _CollapseTable(dict):
    """str.translate table filled on first sight of each code point (bounded in size)."""

    def __missing__(self, cp: int) -> int:
        if len(self) > 65536:
            self.clear()
        if cp < 128:
            out = cp
        elif cp in WHITE_SPACE:
            out = _COLLAPSED_SPACE
        else:
            out = _COLLAPSED.get(codepoint_class(cp), _COLLAPSED_OTHER)
        self[cp] = out
        return out


class _SpaceTable(dict):
    """str.translate table: non-ASCII white space -> U+000B, everything else unchanged."""

    def __missing__(self, cp: int) -> int:
        if len(self) > 65536:
            self.clear()
        out = _COLLAPSED_SPACE if cp >= 128 and cp in WHITE_SPACE else cp
        self[cp] = out
        return out


_COLLAPSE = _CollapseTable()
_SPACES = _SpaceTable()


def collapse(text: str) -> str:
    """One character per code point: ASCII kept, other code points replaced by their class's
    representative."""
    return text.translate(_COLLAPSE)


# -- regex translation ----------------------------------------------------------------------------

def _class_body(cls: str) -> str:
    """Character-class body for `\\p{cls}` on collapsed text: the representative + ASCII members."""
    members = [cp for cp in range(128) if codepoint_class(cp) == cls]
    parts = [f"\\x{_COLLAPSED[cls]:02x}"]
    i = 0
    while i < len(members):
        j = i
        while j + 1 < len(members) and members[j + 1] == members[j] + 1:
            j += 1
        parts.append(f"\\x{members[i]:02x}" if i == j else f"\\x{members[i]:02x}-\\x{members[j]:02x}")
        i = j + 1
    return "".join(parts)


_PROPERTY_RE = re.compile(r"\\p\{(\w+)\}")


def uses_classes(pattern: str) -> bool:
    return any(m.group(1) in _PROPERTY_CLASS for m in _PROPERTY_RE.finditer(pattern))


def translate(pattern: str) -> str:
    """Rewrite `\\p{X}` as a class over collapsed text (inside `[...]` only the body is inserted)."""
    out = []
    inside = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            m = _PROPERTY_RE.match(pattern, i)
            if m and m.group(1) in _PROPERTY_CLASS:
                body = _class_body(_PROPERTY_CLASS[m.group(1)])
                out.append(body if inside else f"[{body}]")
                i = m.end()
                continue
            out.append(pattern[i:i + 2])  # an escape: copy both characters
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        out.append(c)
        i += 1
    return "".join(out)


class RegexSplitter:
    """Applies a list of split regexes in turn; each splits every piece the previous one made.

    A piece is cut into its matches and the stretches between them (both kept), like llama.cpp's
    `unicode_regex_split`.
    """

    def __init__(self, patterns: tuple[str, ...]):
        self.patterns = patterns
        self._steps = []
        for p in patterns:
            collapsed = uses_classes(p)
            regex = re.compile(translate(p) if collapsed else p, re.ASCII)
            self._steps.append((regex, collapsed))

    def split(self, text: str) -> list[str]:
        """The words of `text`, in order; they concatenate back to `text`."""
        if not text:
            return []
        collapsed = None
        spaced = None
        bounds = [(0, len(text))]
        for regex, use_collapsed in self._steps:
            if use_collapsed:
                if collapsed is None:
                    collapsed = collapse(text)
                view = collapsed
            else:
                if spaced is None:
                    spaced = text.translate(_SPACES)
                view = spaced
            new_bounds = []
            for start, end in bounds:
                piece = view[start:end]
                pos = 0
                for m in regex.finditer(piece):
                    s, e = m.span()
                    if s == e:
                        continue
                    if s > pos:
                        new_bounds.append((start + pos, start + s))
                    new_bounds.append((start + s, start + e))
                    pos = e
                if pos < end - start:
                    new_bounds.append((start + pos, end))
            bounds = new_bounds
        return [text[s:e] for s, e in bounds]


# -- the table ------------------------------------------------------------------------------------

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BAILINGMOE = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
UFAKZEKA = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
MINICPM5 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EXAONE_MOE = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
JAIS2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         + "".join(rf"|\s{{{n}}}(?!\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4))
         + r"|\s{1,2}(?!\S)|\s{1}")
# Lower/upper-case runs, written with lookaheads because \p{Lu}/\p{Ll} cannot be told apart on
# collapsed text; as in llama.cpp this distinguishes case for ASCII letters only.
_UPPER_RUN = r"((?=[\p{L}])([^a-z]))"
_LOWER_RUN = r"((?=[\p{L}])([^A-Z]))"
GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER_RUN}*{_LOWER_RUN}+{_CONTRACTIONS}?"
         rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER_RUN}+{_LOWER_RUN}*{_CONTRACTIONS}?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER_RUN}*{_LOWER_RUN}+"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER_RUN}+{_LOWER_RUN}*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
DEEPSEEK_MIXED = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                  r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp pre-tokenizes one family of byte-level BPE models.

    `clean_spaces`: detokenize removes the space before , . ? ! and in " 's" etc.
    (clean_up_tokenization_spaces). `ignore_merges`: a word that is itself a token is emitted whole.
    `add_bos`: the default for tokenizer.ggml.add_bos_token when the file does not say.
    """

    kind: str
    regexes: tuple[str, ...]
    clean_spaces: bool = True
    ignore_merges: bool = False
    add_bos: bool = False
    has_bos: bool = True  # False: llama.cpp drops the default BOS id (chatglm)


def _kind(kind: str, *regexes: str, **flags) -> PreTokenizer:
    return PreTokenizer(kind, tuple(regexes), **flags)


_DEFAULT = _kind("default", r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]")
_LLAMA3 = _kind("llama3", LLAMA3, ignore_merges=True, add_bos=True)
_GPT2 = _kind("gpt2", GPT2)
_QWEN2 = _kind("qwen2", QWEN2, clean_spaces=False)
_STARCODER = _kind("starcoder", r"\p{N}", GPT2)
_STARCODER_RAW = _kind("starcoder", r"\p{N}", GPT2, clean_spaces=False)
_DEEPSEEK_CODER = _kind("deepseek-coder", "[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+",
                        "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}", clean_spaces=False)
_CHATGLM = _kind("chatglm4", LLAMA3, has_bos=False)

# tokenizer.ggml.pre -> pre-tokenizer (names as llama.cpp's llama-vocab.cpp accepts them).
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano"], _LLAMA3),
    "dbrx": _kind("dbrx", LLAMA3),
    "smaug-bpe": _kind("smaug", LLAMA3),
    "jais-2": _kind("jais2", JAIS2),
    **dict.fromkeys(["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                     "a.x-4.0", "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais",
                     "jina-v1-en", "jina-v2-code", "roberta-bpe"], _GPT2),
    "trillion": _kind("gpt2", GPT2, clean_spaces=False),
    "granite-docling": _kind("gpt2", GPT2, clean_spaces=False),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open"],
                    _QWEN2),
    **dict.fromkeys(["stablelm2", "megrez"], _kind("qwen2", QWEN2)),
    "qwen35": _kind("qwen35", QWEN35, clean_spaces=False),
    **dict.fromkeys(["starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"],
                    _STARCODER),
    **dict.fromkeys(["command-r", "smollm"], _STARCODER_RAW),
    "falcon": _kind("falcon", r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"),
    "deepseek-coder": _DEEPSEEK_CODER,
    **dict.fromkeys(["deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"],
                    _kind("deepseek3", r"\p{N}{1,3}", CJK, DEEPSEEK_MIXED, clean_spaces=False)),
    **dict.fromkeys(["poro-chat", "bloom", "gpt3-finnish"], _kind("bloom", BLOOM)),
    "viking": _kind("viking", BLOOM, r"\p{N}", clean_spaces=False),
    "chatglm-bpe": _CHATGLM,
    **dict.fromkeys(["glm4", "glm5"], _kind("chatglm4", LLAMA3, ignore_merges=True, has_bos=False)),
    "tekken": _kind("tekken", TEKKEN, clean_spaces=False, ignore_merges=True, add_bos=True),
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
                    _kind("gpt4o", GPT4O, clean_spaces=False)),
    "seed-coder": _kind("seed-coder", SEED_CODER, clean_spaces=False),
    **dict.fromkeys(["bailingmoe", "bailingmoe2", "llada-moe"],
                    _kind("bailingmoe", BAILINGMOE, clean_spaces=False)),
    "grok-2": _kind("grok-2", QWEN2, clean_spaces=False),
    "ufakzeka": _kind("ufakzeka", UFAKZEKA, clean_spaces=False),
    "minicpm5": _kind("minicpm5", r"\p{N}{1,3}", MINICPM5, ignore_merges=True),
    "exaone-moe": _kind("exaone-moe", EXAONE_MOE),
    "laguna": _kind("laguna", "[^\\n]+|[\\n]+", QWEN2, clean_spaces=False),
}


def pre_tokenizer(name: str | None, source: str = "model") -> PreTokenizer:
    """The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` = `name` (missing: 'default')."""
    if not name:
        return _DEFAULT
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        raise UnsupportedError(
            f"{source}: pre-tokenizer '{name}' (tokenizer.ggml.pre) is not supported; known: "
            f"{', '.join(sorted(PRE_TOKENIZERS))}") from None


@lru_cache(maxsize=None)
def splitter(patterns: tuple[str, ...]) -> RegexSplitter:
    """Compiled splitter for a regex list, shared by every tokenizer that uses it."""
    return RegexSplitter(patterns)
