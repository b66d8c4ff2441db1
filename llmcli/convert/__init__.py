"""Hugging Face checkpoint -> GGUF, matching llama.cpp's convert_hf_to_gguf.py.

    from llmcli.convert import convert
    summary = convert("path/to/hf-model", "model-f16.gguf", outtype="f16")

Modules: checkpoint (config.json + lazy safetensors), base (what all architectures share),
one module per architecture family (llama, qwen2, gemma3, phi3, ...) registered in registry,
metadata (general.* keys, key order) with model_card (README.md front matter), pipeline (type
choice, encoders, streaming write), kernels (numba float32 -> float16), quantized (`--outtype
Q4_K_M` etc.: the f16 conversion fed to llmcli.quantize in one pass; convert uses quantize, never
the other way round).

Adding an architecture: a module with an `ArchConverter` subclass decorated with
`@register("HFArchitectureName")` (TENSOR_NAMES table, CONFIG_DEFAULTS, and overrides of
set_hparams / set_vocab / transform / tensor_outputs as needed), and its name in
registry.ARCH_MODULES. Converting straight to quantized types: pass a `TensorQuantizer`.
"""

from .pipeline import OUTTYPE_CHOICES, ConvertSummary, TensorQuantizer, convert, default_output

__all__ = ["convert", "ConvertSummary", "TensorQuantizer", "OUTTYPE_CHOICES", "default_output"]
