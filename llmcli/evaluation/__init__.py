"""Measuring a model on a text, as llama.cpp's `llama-perplexity` does.

    chunks = text_chunks(tokenizer, read_text_file(path), n_ctx=512)   # (shared with imatrix)
    result = perplexity(model, chunks, n_batch=2048)                    # per-chunk and final PPL
    perplexity(model, chunks, base_out=path)                            # ... and a KL-divergence base file
    kld = kl_divergence(model, tokenizer, KLDBaseFile(path))            # another model against that file

A layer above `models/` (beside `generation/`): it turns a model and a tokenizer into figures;
the command line only renders them. Modules: `chunks` (text -> n_ctx token chunks), `logprobs`
(numba kernels: negative log-likelihoods, llama.cpp's 16-bit log-probabilities, KL divergence per
token), `kld_file` (the base file format), `measure` (the evaluation loop and the statistics).
"""

from .chunks import TextChunks, read_text_file, text_chunks
from .kld_file import KLDBaseFile, KLDBaseHeader
from .measure import KLDResult, PerplexityResult, kl_divergence, perplexity

__all__ = ["KLDBaseFile", "KLDBaseHeader", "KLDResult", "PerplexityResult", "TextChunks", "kl_divergence",
           "perplexity", "read_text_file", "text_chunks"]
