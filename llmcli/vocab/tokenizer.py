"""The runtime tokenizer, built from a GGUF file's `tokenizer.*` metadata, giving llama.cpp's ids.

Two vocabulary kinds, as `tokenizer.ggml.model` names them:

* `llama` - SentencePiece (SPM). Spaces become U+2581 "▁" (with one prepended when
  `add_space_prefix`), then characters are merged pairwise, always the pair whose merged text is the
  vocabulary token with the highest score (ties: the leftmost pair). A character no token covers is
  emitted as byte tokens `<0xXX>`.
* `gpt2` - byte-level BPE. A pre-tokenizer (`tokenizer.ggml.pre`, see `pretokenizers`) cuts the
  text into words, each word's UTF-8 bytes are written with GPT-2's byte-to-character table, and
  pairs are merged by `tokenizer.ggml.merges` rank (lowest first, ties: leftmost).

The work is split by job: `load` reads the vocabulary and llama.cpp's loading rules (special ids,
end-of-generation set, attribute fixes), `merge` holds the pair-merge heap and the byte table,
`encode` cuts out special tokens and merges the rest, `decode` renders pieces and streams text;
`tokens` holds the token types, attributes and metadata keys shared with the converter (`hf`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .decode import Decoder, StreamingDetokenizer
from .encode import Encoder
from .load import Vocab


class Tokenizer(Vocab):
    """Text <-> token ids exactly as llama.cpp (commit 0c1e570) does for the same GGUF metadata.

    `Tokenizer.from_gguf(reader)` or `Tokenizer.from_metadata(mapping)`; the vocabulary queries
    (`bos_id`, `eos_id`, `is_eog`, `token_attr`, ...) come from `Vocab`.
    """

    def __init__(self, md: Mapping[str, Any], source: str = "metadata"):
        super().__init__(md, source)
        self._encoder = Encoder(self)
        self._decoder = Decoder(self)

    # ---- tokenize --------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`. add_special: BOS/EOS as the metadata asks (add_bos_token /
        add_eos_token). parse_special: control tokens written in the text (e.g. "<start_of_turn>")
        become those tokens; user-defined tokens are always recognised."""
        return self._encoder.tokenize(text, add_special, parse_special)

    # ---- detokenize ------------------------------------------------------------------------------

    def token_to_piece(self, tid: int, special: bool = True, lstrip: bool = False) -> bytes:
        """The bytes token `tid` stands for. special=False: control/unknown tokens give b"".
        lstrip: drop one leading space (llama.cpp strips it from the first token of a text when
        the tokenizer prepends one)."""
        return self._decoder.token_to_piece(tid, special, lstrip)

    def detokenize_bytes(self, ids: Iterable[int], remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        """llama.cpp's llama_detokenize: pieces concatenated; the first piece loses its leading
        space when the tokenizer prepends one; remove_special drops a leading BOS / trailing EOS
        that add_special would have added; unparse_special renders control tokens' text; byte-level
        BPE vocabularies with clean_spaces tidy " ," " ." " 's" etc."""
        return self._decoder.detokenize_bytes(ids, remove_special, unparse_special)

    def detokenize(self, ids: Iterable[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        """As detokenize_bytes, decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.detokenize_bytes(ids, remove_special, unparse_special).decode("utf-8", "replace")

    def stream(self, special: bool = False, preserved: frozenset[int] = frozenset()) -> StreamingDetokenizer:
        """A detokenizer fed one id at a time (for generated text); `preserved`: control tokens
        shown as their text even when `special` is off."""
        return StreamingDetokenizer(self._decoder, special, preserved)
