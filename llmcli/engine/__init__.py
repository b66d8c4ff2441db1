"""The inference engine: kernels, KV cache, sampling, generation (the tokenizer is in `llmcli.vocab`)."""
