"""Model architectures: one module per family, a registry, and the generic decoder they share.

    model = load_model("m.gguf", threads=2, ctx_size=2048)   # weights and work buffers only
    model.logits(ids)                  # (len(ids), n_vocab) float32, from an empty context
    seq = model.new_sequence()         # a sequence with its own KV cache
    model.forward(seq, ids)            # last-position logits, continuing seq's cached context
    cache = model.new_cache(4)         # one KV cache for 4 sequences: cache.slot(i, model.n_ctx)
    model.decode([s0, s1], [t0, t1])   # one token for each sequence in one pass over the weights
    model.step([s0, s1], [t0, t1], [(s2, chunk, pos, True)])   # ... and prompt chunks of others

Generating text (sampling, stop strings, many sequences at once) is `llmcli.generation`'s job.
"""

from .registry import ARCHITECTURES, ArchSpec, get_spec, register, supported_architectures
from .transformer import Transformer, load_model

__all__ = ["ARCHITECTURES", "ArchSpec", "Transformer", "get_spec", "load_model", "register",
           "supported_architectures"]
