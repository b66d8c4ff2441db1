"""What GGUF tokenizer metadata says about tokens, as llama.cpp defines it.

One copy for both sides: `hf` writes these values and keys when converting, the runtime tokenizer
reads them.
"""

from __future__ import annotations

import enum

KEY = "tokenizer.ggml."  # prefix of the tokenizer metadata keys
SPM, BPE = "llama", "gpt2"  # the two `tokenizer.ggml.model` kinds: SentencePiece, byte-level BPE


class TokenType(enum.IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class TokenAttr(enum.IntFlag):
    """llama.cpp's token attributes (llama_token_attr), derived from the type at load."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# Token type value (index) -> attribute: the attribute of the same name (llama.cpp's token_to_attr).
TOKEN_TYPE_ATTR = tuple(int(TokenAttr[TokenType(value).name]) for value in range(len(TokenType)))

# Attributes as plain ints for the runtime's hot paths (IntFlag arithmetic is slow over 262k tokens).
UNKNOWN, UNUSED, NORMAL, CONTROL, USER_DEFINED, BYTE, LSTRIP, RSTRIP = (
    int(TokenAttr.UNKNOWN), int(TokenAttr.UNUSED), int(TokenAttr.NORMAL), int(TokenAttr.CONTROL),
    int(TokenAttr.USER_DEFINED), int(TokenAttr.BYTE), int(TokenAttr.LSTRIP), int(TokenAttr.RSTRIP))
SPECIAL_ATTRS = CONTROL | USER_DEFINED | UNKNOWN  # cut out of text before tokenizing
HIDDEN_ATTRS = CONTROL | UNKNOWN  # no text unless asked to render specials

SPACE_MARK = "\u2581"  # SentencePiece's visible space "▁"

# Special-token role -> metadata key, in llama.cpp's reading order. The converter writes the key
# of each role it finds an id for; a role not here (`cls`, CodeGemma's `prefix`) is not written.
SPECIAL_ID_KEYS = {
    "bos": KEY + "bos_token_id",
    "eos": KEY + "eos_token_id",
    "eot": KEY + "eot_token_id",
    "eom": KEY + "eom_token_id",
    "unk": KEY + "unknown_token_id",
    "sep": KEY + "seperator_token_id",  # sic: llama.cpp's spelling
    "pad": KEY + "padding_token_id",
    "mask": KEY + "mask_token_id",
    "fim_pre": KEY + "fim_pre_token_id",
    "fim_suf": KEY + "fim_suf_token_id",
    "fim_mid": KEY + "fim_mid_token_id",
    "fim_pad": KEY + "fim_pad_token_id",
    "fim_rep": KEY + "fim_rep_token_id",
    "fim_sep": KEY + "fim_sep_token_id",
}
# Deprecated keys llama.cpp still reads, after the ones above (so they win); never written.
DEPRECATED_ID_KEYS = (
    ("fim_pre", KEY + "prefix_token_id"),
    ("fim_suf", KEY + "suffix_token_id"),
    ("fim_mid", KEY + "middle_token_id"),
)
# Role -> the flag saying whether tokenize() adds that token.
ADD_TOKEN_KEYS = {
    "bos": KEY + "add_bos_token",
    "eos": KEY + "add_eos_token",
    "sep": KEY + "add_sep_token",
}
