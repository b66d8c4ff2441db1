"""Tokenizer formats shared by `convert` and the runtime tokenizer.

* `hf` - Hugging Face tokenizer files (tokenizer.model, tokenizer.json, tokenizer_config.json,
  chat_template.jinja) -> GGUF tokenizer metadata, as llama.cpp's converter writes it.
* `bpe_hashes` - llama.cpp's table identifying a byte-level BPE pre-tokenizer by a hash.
* `pretokenizers` - pre-tokenizer name -> split regexes (for the runtime tokenizer).

Submodules are imported on use: reading SentencePiece or tokenizers files needs those libraries,
the runtime does not.
"""
