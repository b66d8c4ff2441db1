"""Weights as the engine sees them: views into the GGUF mmap, never dequantized whole.

`Linear` is one projection y = W x (+ b) over a matrix stored in any ggml type the matmul kernels
handle; `float_rows` decodes only the rows of the token embedding a batch looks up.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..gguf.constants import GGMLType
from ..gguf.reader import GGUFReader, TensorInfo
from . import matmul as mm

COMPUTABLE_TYPES = tuple(mm.supported_types())

# Plain float formats read directly (embedding lookups, norm weights, biases).
_FLOAT_VIEWS = {GGMLType.F32: np.float32, GGMLType.F16: np.float16}


def float_rows(raw: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """uint8 rows (n, row_bytes) of any supported type -> float32 (n, row_length)."""
    if ggml_type in _FLOAT_VIEWS:
        return raw.view(_FLOAT_VIEWS[ggml_type]).astype(np.float32)
    if ggml_type == GGMLType.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    from .. import quants

    return quants.dequantize(raw, ggml_type)


def vector(reader: GGUFReader, info: TensorInfo) -> np.ndarray:
    """A small 1-D tensor (norm weight, bias, rope factors) as a float32 array."""
    return np.ascontiguousarray(float_rows(reader.tensor_bytes(info), info.type).reshape(-1))


class Linear:
    """y = x @ W.T (+ bias) with W (n_out, n_in) kept as raw ggml blocks in the mmap.

    `rows` selects a row range of the stored matrix (one expert of a 3-D MoE tensor, `expert` its
    index); `raw` gives the tensor's bytes when they are not to be read from the map (e.g.
    `GGUFReader.tensor_copy`); `workspace` is the `matmul.Workspace` whose buffers multi-row calls
    use (None: temporaries). `name` is the GGUF tensor's name; `expert` is None for a 2-D one.
    """

    def __init__(self, reader: GGUFReader, info: TensorInfo, bias: np.ndarray | None = None,
                 rows: tuple[int, int] | None = None, raw: np.ndarray | None = None,
                 workspace: mm.Workspace | None = None, expert: int | None = None):
        if info.type not in COMPUTABLE_TYPES:
            raise UnsupportedError(
                f"{reader.path}: tensor '{info.name}' has type {info.type.name}, which the engine "
                f"cannot compute (supported: {', '.join(t.name for t in COMPUTABLE_TYPES)})")
        if raw is None:  # default: the bytes in place in the map
            raw = reader.tensor_bytes(info)
        if rows is not None:
            raw = raw[rows[0]:rows[1]]
        self.name = info.name
        self.expert = expert
        self.n_expert = info.shape[2] if len(info.shape) > 2 else 1
        self.type = info.type
        self.n_in = info.shape[0]
        self.n_out = raw.shape[0]
        self.matrix = mm.QuantizedMatrix(raw, info.type, self.n_in)
        self.bias = bias
        self.workspace = workspace
        # True: prompt rows too get mat-vec arithmetic (8-bit activations), never the GEMM
        self.row_exact = False
        # The GEMM of multi-row calls: "float" or "int8" (matmul.matmul's `gemm`)
        self.gemm = "float"

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """x: float32 (T, n_in) -> out (T, n_out)."""
        if x.shape[0] == 1:
            mm.matvec(self.matrix, x[0], out[0])
        else:
            mm.matmul(self.matrix, x, out, workspace=self.workspace, gemm=self.gemm)
        if self.bias is not None:
            out += self.bias
        return out

    def segments(self, x: np.ndarray, out: np.ndarray, bounds) -> np.ndarray:
        """`self(x[a:b], out[a:b])` for each row range a:b of bounds, in one pass over the weights
        (each range gets the bits it gets alone)."""
        mm.matmul_segments(self.matrix, x, out, bounds, workspace=self.workspace, gemm=self.gemm)
        if self.bias is not None:
            out += self.bias
        return out

    def uses_gemm(self, n_rows: int) -> bool:
        """Whether `self(x)` of n_rows rows runs the GEMM (else mat-vec arithmetic, row-exact; always
        for a matrix marked `row_exact`)."""
        return not self.row_exact and n_rows >= mm.gemm_min_tokens(self.type, self.gemm)

    @staticmethod
    def decode_experts(experts: list["Linear"], x: np.ndarray, out: np.ndarray, decoding: bool = False) -> np.ndarray:
        """out[i] = experts[i] applied to x[i], each row the bits `decode` gives it, in one call
        for all of them (matmul.expert_matvecs)."""
        mm.expert_matvecs([e.matrix for e in experts], x, out, decoding)
        for i, e in enumerate(experts):
            if e.bias is not None:
                out[i] += e.bias
        return out

    def decode(self, x: np.ndarray, out: np.ndarray, decoding: bool = False) -> np.ndarray:
        """x: float32 (B, n_in) -> out (B, n_out) with mat-vec arithmetic for every row, whatever B
        (batched decode: row b equals what one row alone gives). decoding: the rows are decoded
        tokens (matmul.matvecs: float64 sums where the matrix is marked so)."""
        mm.matvecs(self.matrix, x, out, decoding)
        if self.bias is not None:
            out += self.bias
        return out
