"""Weight matrices repacked once, at load, into VNNI row panels (kernels/panel_int8.py has the
layouts and the kernels): output and layer matrices of Q8_0, Q4_0, Q5_0 or IQ4_NL (the layers in
the order `LAYER_PANEL_ORDER` says), where the CPU has VNNI.

    pack_panels(W, release)    W.panels = W's rows in panels; `matmul.matvec`/`matvecs` then run
                               the panel kernel for W and `matmul`'s integer GEMM decodes its
                               tiles from the panels
    pack_kernel_order(W, release)  W.kernel_rows = a Q4_K layer matrix's rows in its 8-bit
                               mat-vec's order (no panels: the row kernel, its bits, less work
                               per block); the integer GEMM decodes its tiles from them too

Why once and for all B: the panel kernel is what makes batched decoding pay (the demo model's Q8_0
output, 262144 x 640: 8 columns ~2x faster than the row-by-row B-column mat-vec) and what a lone
token's 640-wide rows run fastest on (no horizontal sum per row: the demo IQ4_XS file's IQ4_NL
matrices ~2x faster than the row mat-vec), and a sequence must get the same bits alone (B = 1) as
in a batch, so B = 1 takes the same kernel. The packed copy holds the same bytes as the GGUF rows,
reordered, and takes their place: `release` drops the mapped pages as their rows are packed, and
the prompt GEMM reads the panels too, so the map's pages are not read again (only the "float"
activation modes, which read rows, bring them back).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

from ..errors import UnsupportedError
from ..gguf.constants import GGMLType
from .kernels.int8_kquants import Q4_K_KERNEL_ORDER_BYTES, q4_k_kernel_order
from .kernels.panel_int8 import (CODE_BYTES, CODE_VALUES, KERNELS, PANEL_KINDS, ROWS_PER_PANEL, PanelKernels,
                                 rows_panels)

__all__ = ["KERNEL_ORDER_TYPES", "LAYER_PANEL_ORDER", "WIDE_DECODE", "PanelMatrix", "pack_kernel_order", "pack_panels",
           "packs_layer_panels", "packs_panels"]

# Bytes of source rows packed between two calls of `release` (~11 MB).
PACK_CHUNK_BYTES = 11 << 20
# Below this many weight bytes times columns a product runs on the calling thread (as
# matmul.SERIAL_MATVEC_BYTES for the row mat-vecs: a parallel region's entry costs ~25 us).
SERIAL_PANEL_BYTES = 128 * 1024


# The layer matrices repacked at load, and whether their mat-vecs keep the row mat-vec's summation
# order (True) or take the panel kernel's faster one (False): the types llama.cpp's CPU backend
# repacks (Q4_0, IQ4_NL) the latter. Q5_0 and Q8_0 keep the rows' bits: the panel kernel sums a
# row's blocks in another order, and on the demo model (Q5_0, Q8_0 layers) that rounding noise,
# amplified by every layer's 8-bit activations, moved its importance-matrix sums past
# llama-imatrix's own spread (max 1.6e-2 against 1.0e-2) and a long greedy JSON generation off
# llama.cpp's path where llama.cpp's top-2 margin was 3.0 (tests/test_imatrix.py,
# tests/test_grammar_llamacpp.py). In row order they still stream panels (no horizontal sums,
# one block decode for 3 columns): demo 640-wide Q5_0 rows ~1.5-2x the row mat-vec. (Their prompt
# rows, that is: decoded tokens take WIDE_DECODE's float64 sums.)
LAYER_PANEL_ORDER = {GGMLType.Q4_0: False, GGMLType.IQ4_NL: False, GGMLType.Q5_0: True, GGMLType.Q8_0: True}
# The layer matrices whose decoded tokens (not prompt rows) sum each row in float64 instead
# (matmul.matvecs `decoding`, kernels/panel_int8.py's `wide` kernels; `rows_wide` where the rows
# stay unpacked, the same bits): the row order's 8 float lanes cost 8 FMAs per block and column
# (on this Zen 4 an FMA and a vpdpbusd share one port), the float64 sum 2 - the demo's
# 2048 x 640 Q5_0 at 1 thread, warm, B = 4: 80 -> 57 us, B = 8: 155 -> 112 us; a step of 4
# sequences 19.2-20.1 -> 17.8-18.2 ms. Each product (int32 block sum times d_w * xd, rounded to
# float32 as ggml does) is exact in float64, so a row is its exact sum rounded once: as close to
# llama.cpp's decoding as the row order (tests/test_grammar_llamacpp.py; llama-imatrix's sums
# from prompt rows keep the row order: tests/test_imatrix.py).
WIDE_DECODE = frozenset(t for t, row_order in LAYER_PANEL_ORDER.items() if row_order)


def packs_layer_panels(ggml_type: GGMLType) -> bool:
    """Whether a layer matrix (not the output matrix) of this type is repacked at load (in the
    order LAYER_PANEL_ORDER says)."""
    return GGMLType(ggml_type) in LAYER_PANEL_ORDER and packs_panels(ggml_type)


def packs_panels(ggml_type: GGMLType) -> bool:
    """Whether matrices of this type can be repacked into panels on this CPU (Q8_0, Q4_0, Q5_0,
    IQ4_NL with VNNI)."""
    return GGMLType(ggml_type) in PANEL_KINDS


def _kernel(kernels: PanelKernels, name: str, n_bytes: int) -> Callable:
    """The PanelKernels field `name`, or its serial twin for a product over fewer than
    SERIAL_PANEL_BYTES (weight bytes times columns) or on one thread."""
    serial = n_bytes < SERIAL_PANEL_BYTES or numba.get_num_threads() == 1
    return getattr(kernels, f"{name}_serial" if serial else name)


class PanelMatrix:
    """A Q8_0/Q4_0/Q5_0/IQ4_NL (n_rows, n_cols) matrix as 16-row VNNI panels: codes (P, n_cols * 16)
    uint8 for Q8_0, (P, n_cols * 8) for the 4-bit types, (P, n_cols * 10) for Q5_0, and scales
    (P, n_cols / 32 * 16) uint16 (fp16 bits), P = ceil(n_rows / 16)."""

    __slots__ = ("codes", "scales", "n_rows", "n_cols", "kind", "row_order")

    def __init__(self, weights: np.ndarray, n_cols: int, ggml_type: GGMLType,
                 release: Callable[[int, int], None] | None = None, row_order: bool = False):
        """Pack `weights` (n_rows, n_blocks, block bytes) of `ggml_type`, about PACK_CHUNK_BYTES of
        rows at a time, calling release(first_row, end_row) after each chunk: those rows' source
        bytes are no longer read. row_order: mat-vecs give the row mat-vec's bits (Q8_0, Q5_0)."""
        if not packs_panels(ggml_type):
            raise UnsupportedError(f"no panel kernel for {GGMLType(ggml_type).name} on this CPU")
        self.kind = PANEL_KINDS[GGMLType(ggml_type)]
        if row_order and KERNELS[self.kind].row_order is None:
            raise UnsupportedError(f"no row-order panel kernel for {GGMLType(ggml_type).name}")
        self.row_order = row_order
        n_rows = weights.shape[0]
        n_panels = -(-n_rows // ROWS_PER_PANEL)
        self.n_rows, self.n_cols = n_rows, n_cols
        self.codes = np.empty((n_panels, n_cols // 32 * CODE_BYTES[self.kind] * ROWS_PER_PANEL), np.uint8)
        self.scales = np.empty((n_panels, n_cols // 32 * ROWS_PER_PANEL), np.uint16)
        pack = KERNELS[self.kind].pack
        chunk = max(1, PACK_CHUNK_BYTES // max(1, weights[:1].nbytes * ROWS_PER_PANEL))
        for p0 in range(0, n_panels, chunk):
            p1 = min(n_panels, p0 + chunk)
            pack(weights, ROWS_PER_PANEL * p0, self.codes[p0:p1], self.scales[p0:p1])
            if release is not None:
                release(ROWS_PER_PANEL * p0, min(n_rows, ROWS_PER_PANEL * p1))

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    def matvecs(self, X: np.ndarray, out: np.ndarray, wide: bool = False) -> np.ndarray:
        """out[t, r] = row r . X[t] for X float32 (B, n_cols), out float32 (B, n_rows), both
        contiguous (checked by matmul): column t's bits do not depend on B or the thread count.
        wide: each row's sum in float64 (a row-order matrix's decoded tokens, WIDE_DECODE)."""
        tail = np.empty((X.shape[0], ROWS_PER_PANEL), np.float32)
        _kernel(KERNELS[self.kind], self.kernel_name(wide), self.nbytes * X.shape[0])(self.codes, self.scales, X,
                                                                                      out, tail)
        return out

    def kernel_name(self, wide: bool) -> str:
        """The PanelKernels field `matvecs` runs with this `wide`."""
        return "wide" if wide else "row_order" if self.row_order else "matvecs"

    @staticmethod
    def expert_matvecs(matrices: list["PanelMatrix"], X: np.ndarray, out: np.ndarray, wide: bool) -> bool:
        """out[i] = matrices[i] . X[i] (same kind and shape; a MoE token's experts) in one call,
        each pair the bits `matvecs(X[i:i + 1], ..., wide)` gives it, when the kind's `experts`
        kernel is that arithmetic (float64 sums for WIDE_DECODE types, the plain panel order
        for the others); False, nothing done, when it is not."""
        first = matrices[0]
        kernels = KERNELS[first.kind]
        expected = "wide" if kernels.wide is not None else "matvecs"
        if any(m.kind != first.kind or m.codes.shape != first.codes.shape or m.kernel_name(wide) != expected
               for m in matrices):
            return False
        tail = np.empty((len(matrices), ROWS_PER_PANEL), np.float32)
        _kernel(kernels, "experts", first.nbytes * len(matrices))(tuple(m.codes for m in matrices),
                                                                  tuple(m.scales for m in matrices), X, out, tail)
        return True

    def decode_tile(self, r0: int, codes: np.ndarray, scales: np.ndarray) -> None:
        """Rows r0 .. r0 + 16 P - 1 (r0 a multiple of 16) as the integer GEMM's decoded tile
        (kernels/gemm_int8.py: codes (P, n_cols * 16) uint8, scales (P, n_cols / 32 * 16) float32);
        rows past the matrix's end with scale 0. For the real rows the bytes the GEMM's decoder
        makes from the rows."""
        KERNELS[self.kind].decode(self.codes, self.scales, r0 // ROWS_PER_PANEL, codes, scales)

    def rows(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (len(ids), n_cols) float32 = rows ids decoded, the bits the type's decoder gives (a
        tied output matrix's token embeddings: looked up here, the map's pages are not touched)."""
        rows_panels(self.codes, self.scales, np.ascontiguousarray(ids, np.int64), CODE_VALUES[self.kind], out)
        return out


def pack_panels(W, release: Callable[[int, int], None] | None = None, row_order: bool = False) -> None:
    """Give the QuantizedMatrix W its panels (W.panels), `release` and `row_order` as for
    PanelMatrix: from then on every mat-vec with W (any number of columns) runs the panel kernel
    and the integer GEMM decodes from the panels."""
    W.panels = PanelMatrix(W.weights, W.n_cols, W.ggml_type, release, row_order)


# Layer matrices whose rows are repacked at load into their 8-bit mat-vec's order (the same weights
# and arithmetic, so the same bits): Q4_K, 148-byte blocks whose nibbles sit where the kernel's
# vpdpbusd takes them and whose 6-bit scales and mins are bytes (kernels/int8_kquants.py
# `q4_k_kernel_order`). Per super-block the kernel then needs no vpermt2q and no scale unpacking:
# Llama-3.2-1B-shaped ffn_gate, 1 thread, in cache 386 -> 276 us.
KERNEL_ORDER_TYPES = frozenset({GGMLType.Q4_K})


def pack_kernel_order(W, release: Callable[[int, int], None] | None = None) -> None:
    """W.kernel_rows = W's rows (a KERNEL_ORDER_TYPES matrix) in the mat-vec's order, about
    PACK_CHUNK_BYTES of rows at a time, calling release(first_row, end_row) after each chunk: from
    then on the 8-bit mat-vecs and the integer GEMM's tiles read only these ("float" activation
    modes still read the rows)."""
    n_rows, n_blocks, block_bytes = W.weights.shape
    rows = np.empty((n_rows, n_blocks, Q4_K_KERNEL_ORDER_BYTES), np.uint8)
    chunk = max(1, PACK_CHUNK_BYTES // max(1, n_blocks * block_bytes))
    for r0 in range(0, n_rows, chunk):
        r1 = min(n_rows, r0 + chunk)
        q4_k_kernel_order(W.weights[r0:r1].reshape(-1, block_bytes), rows[r0:r1].reshape(-1, Q4_K_KERNEL_ORDER_BYTES))
        if release is not None:
            release(r0, r1)
    rows.flags.writeable = False  # the kernels are compiled for read-only weights
    W.kernel_rows = rows
