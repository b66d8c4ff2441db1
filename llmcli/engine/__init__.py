"""Compute: matrix kernels on quantized blocks, the transformer ops, the KV cache, thread policy,
compile watching.

Sampling, chat templates and the generation loop are `llmcli.generation`; the tokenizer is `llmcli.vocab`."""

from .threads import configure_wait_policy

# Before numba loads its threading layer (libgomp reads its environment once): see threads.py.
configure_wait_policy()
