"""Model architectures: one module per family, a registry, and the generic decoder they share.

    model = load_model("m.gguf", threads=2, ctx_size=2048)
    model.logits(ids)              # (len(ids), n_vocab) float32, from an empty context
    model.forward(ids)             # last-position logits, continuing the cached context
    model.reset()
    for tok in model.generate(prompt_ids, max_tokens=32): ...
"""

from .registry import ARCHITECTURES, ArchSpec, get_spec, register, supported_architectures
from .transformer import Transformer, load_model

Model = Transformer

__all__ = ["ARCHITECTURES", "ArchSpec", "Model", "Transformer", "get_spec", "load_model", "register",
           "supported_architectures"]
