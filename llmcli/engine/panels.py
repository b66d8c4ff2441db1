"""Weight matrices repacked once, at load, into VNNI row panels (kernels/panel_int8.py has the
layout and the kernel), for the mat-vec arithmetic of every row count below the GEMM's.

    pack_panels(W, release)    W.panels = W's rows in panels; `matmul.matvec`/`matvecs` then run
                               the panel kernel for W, `matmul`'s GEMM still reads W.weights

Why once and for all B: the panel kernel is what makes batched decoding pay on a large Q8_0 matrix
(the demo model's output, 262144 x 640: 8 columns ~2x faster than the row-by-row B-column
mat-vec), and a sequence must get the same bits alone (B = 1) as in a batch, so B = 1 takes the
same kernel (there, memory-bound, as fast as the row mat-vec). The packed copy holds the same bytes
as the GGUF rows, reordered: it takes the place of the output matrix's copy out of the map
(`models.memory.copies_output`), and `release` drops the mapped pages as their rows are packed.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

from ..errors import UnsupportedError
from ..gguf.constants import GGMLType
from .kernels.panel_int8 import (PANEL_TYPES, ROWS_PER_PANEL, matvecs_q8_0_panels, matvecs_q8_0_panels_serial,
                                 pack_q8_0, rows_q8_0_panels)

__all__ = ["PanelMatrix", "pack_panels", "packs_panels"]

# Panels packed between two calls of `release` (~11 MB of Q8_0 rows of 640).
PACK_CHUNK_PANELS = 1024
# Below this many weight bytes times columns a product runs on the calling thread (as
# matmul.SERIAL_MATVEC_BYTES for the row mat-vecs: a parallel region's entry costs ~25 us).
SERIAL_PANEL_BYTES = 128 * 1024


def packs_panels(ggml_type: GGMLType) -> bool:
    """Whether matrices of this type can be repacked into panels on this CPU (Q8_0 with VNNI)."""
    return GGMLType(ggml_type) in PANEL_TYPES


class PanelMatrix:
    """A Q8_0 (n_rows, n_cols) matrix as 16-row VNNI panels: codes (P, n_cols * 16) uint8 and
    scales (P, n_cols / 32 * 16) uint16 (fp16 bits), P = ceil(n_rows / 16)."""

    __slots__ = ("codes", "scales", "n_rows", "n_cols")

    def __init__(self, weights: np.ndarray, n_cols: int, release: Callable[[int, int], None] | None = None):
        """Pack Q8_0 `weights` (n_rows, n_blocks, 34), PACK_CHUNK_PANELS panels at a time, calling
        release(first_row, end_row) after each chunk: those rows' source bytes are no longer read."""
        n_rows = weights.shape[0]
        n_panels = -(-n_rows // ROWS_PER_PANEL)
        self.n_rows, self.n_cols = n_rows, n_cols
        self.codes = np.empty((n_panels, n_cols * ROWS_PER_PANEL), np.uint8)
        self.scales = np.empty((n_panels, n_cols // 32 * ROWS_PER_PANEL), np.uint16)
        for p0 in range(0, n_panels, PACK_CHUNK_PANELS):
            p1 = min(n_panels, p0 + PACK_CHUNK_PANELS)
            pack_q8_0(weights, ROWS_PER_PANEL * p0, self.codes[p0:p1], self.scales[p0:p1])
            if release is not None:
                release(ROWS_PER_PANEL * p0, min(n_rows, ROWS_PER_PANEL * p1))

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    def matvecs(self, X: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out[t, r] = row r . X[t] for X float32 (B, n_cols), out float32 (B, n_rows), both
        contiguous (checked by matmul): column t's bits do not depend on B or the thread count."""
        serial = self.nbytes * X.shape[0] < SERIAL_PANEL_BYTES or numba.get_num_threads() == 1
        tail = np.empty((X.shape[0], ROWS_PER_PANEL), np.float32)
        (matvecs_q8_0_panels_serial if serial else matvecs_q8_0_panels)(self.codes, self.scales, X, out, tail)
        return out

    def rows(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (len(ids), n_cols) float32 = rows ids decoded, the bits the Q8_0 decoder gives (a tied
        output matrix's token embeddings: looked up here, the map's pages are not touched)."""
        rows_q8_0_panels(self.codes, self.scales, np.ascontiguousarray(ids, np.int64), out)
        return out


def pack_panels(W, release: Callable[[int, int], None] | None = None) -> None:
    """Give the QuantizedMatrix W its panels (W.panels), `release` as for PanelMatrix: from then
    on every mat-vec with W (any number of columns) runs the panel kernel."""
    if not packs_panels(W.ggml_type):
        raise UnsupportedError(f"no panel kernel for {W.ggml_type.name} on this CPU")
    W.panels = PanelMatrix(W.weights, W.n_cols, release)
