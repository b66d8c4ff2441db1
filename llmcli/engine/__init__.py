"""Compute: matrix kernels on quantized blocks, the transformer ops, the KV cache, compile watching.

Sampling, chat templates and the generation loop are `llmcli.generation`; the tokenizer is `llmcli.vocab`."""
