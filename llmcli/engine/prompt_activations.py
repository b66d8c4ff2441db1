"""How a prompt chunk's layer projections treat their activations: the modes and the default, one
copy (Transformer.set_prompt_activations applies a mode; the API, the server and the commands
offer them). Free of numba so command-line options can name the default without loading kernels.

    "int8-gemm"  activations rounded to 8 bits once per chunk, integer GEMMs over the quantized
                 blocks (kernels/gemm_int8.py) for every weight type that has one (Q4_K, Q5_K, Q6_K,
                 Q8_0, Q4_0, Q5_0, IQ4_NL, IQ4_XS, IQ3_*, IQ2_*), float32 GEMMs for the rest:
                 llama.cpp's arithmetic, the fastest
    "float"      float32 GEMMs everywhere: the more exact (a dequantize-then-float32 reference to
                 rounding error), ~2-4x slower on quantized weights
    "int8"       8-bit activations through the mat-vec kernels (row-exact: each row the bits
                 decoding gives it), output projection float32; the slowest
"""

from __future__ import annotations

from ..errors import BadInputError

# The default first. "int8-gemm" because on every type it covers the integer GEMM measured faster
# than the float32 GEMM (AVX512-VNNI Xeon, 1 thread, 512-token chunks: README, Speed;
# scripts/bench_matvecs.py --gemm-kinds) and its logits stay within llama.cpp's own
# native-vs-dequantized distance of llama.cpp's native ones (tests/test_models_kq.py); weight types
# without an integer GEMM (F16, F32, BF16, Q4_1, Q5_1, Q2_K, Q3_K, IQ1_*, TQ*) keep
# the float32 GEMM.
PROMPT_ACTIVATIONS = ("int8-gemm", "float", "int8")
DEFAULT_PROMPT_ACTIVATIONS = PROMPT_ACTIVATIONS[0]


def check_prompt_activations(mode: str, what: str = "prompt activations") -> None:
    """BadInputError naming `what` (e.g. the option) unless `mode` is one of PROMPT_ACTIVATIONS."""
    if mode not in PROMPT_ACTIVATIONS:
        raise BadInputError(f"{what} must be one of {', '.join(PROMPT_ACTIVATIONS)}, got {mode!r}")
