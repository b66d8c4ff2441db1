"""The inference engine: kernels, KV cache, runtime tokenizer, sampling, generation."""
