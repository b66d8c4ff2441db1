"""The inference engine: kernels, KV cache, sampling, generation (the tokenizer is in `llmcli.vocab`)."""

from .threads import configure_wait_policy

# Before numba loads its threading layer (libgomp reads its environment once): see threads.py.
configure_wait_policy()
