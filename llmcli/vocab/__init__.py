"""Tokenizer formats shared by `convert` and the runtime tokenizer.

* `tokens` - token types and attributes, SentencePiece's space mark, the special-token metadata
  keys: the one definition both sides use.
* `hf` - Hugging Face tokenizer files (tokenizer.model, tokenizer.json, tokenizer_config.json,
  chat_template.jinja) -> GGUF tokenizer metadata, as llama.cpp's converter writes it.
* `bpe_hashes` - llama.cpp's table identifying a byte-level BPE pre-tokenizer by a hash.
* `pretokenizers` - pre-tokenizer name -> split regexes (for the runtime tokenizer).
* `tokenizer` - the runtime `Tokenizer` (GGUF metadata -> llama.cpp's token ids and back), built
  from `load` (vocabulary and loading rules), `merge` (merge heap, byte table), `encode` and
  `decode`.

`hf` is imported on use: reading SentencePiece or tokenizers files needs those libraries, the
runtime does not.
"""

from .tokenizer import Tokenizer

__all__ = ["Tokenizer"]
