"""Matrix products with GGUF weights, read in place from their quantized blocks.

    W = QuantizedMatrix(reader.tensor_bytes(name), GGMLType.Q4_K, n_cols)
    matvec(W, x, out)          # out (n_rows,)           = W @ x            token generation
    matvecs(W, X, out)         # out (B, n_rows)         = X @ W.T          B sequences, a token each
    expert_matvecs([W...], X, out)  # out[i] = W_i @ X[i]                  a MoE token's experts
    matmul(W, X, out, ws)      # out (n_tokens, n_rows)  = X @ W.T          prompt processing
    matmul_segments(W, X, out, bounds, ws)   # matmul per row range, weight tiles decoded once
    dequantize_rows(W, a, b)   # float32 rows a..b-1 (embedding lookup)

Activations: a mat-vec (token generation, and `matvecs`) rounds x to 8 bits where the weight type
has an integer kernel (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL: kernels/int8.py; Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K, IQ4_XS: kernels/int8_kquants.py; IQ2_*: kernels/iq2.py; IQ3_*: kernels/iq3.py; IQ1_*: kernels/iq1.py;
TQ1_0, TQ2_0: kernels/ternary.py), as llama.cpp's CPU backend quantizes activations to Q8_0/Q8_1/Q8_K
blocks; `set_activations("float")`
keeps float32 activations everywhere (a dequantize-then-float32 reference to rounding error).
Mat-muls of GEMM_MIN_TOKENS+ tokens (prompt processing) are GEMMs, float32 unless the call asks for
`gemm="int8"`: then the integer GEMM where the weight type has one (Q4_K, Q5_K, Q6_K, Q8_0, Q4_0,
Q5_0, IQ4_NL, IQ4_XS, IQ3_*, IQ2_*; kernels/gemm_int8.py: the mat-vecs' 8-bit activations and
integer sums, `vpdpbusd` over weight tiles decoded once per call to 8-bit codes), llama.cpp's arithmetic at ~2x the float32 GEMM's speed
here. Models compute prompts with the integer GEMM by default and with the float32 one on request
or where the weight type has no integer GEMM (engine/prompt_activations.py,
Transformer.set_prompt_activations); `matmul`'s own `gemm` stays "float" unless asked, the exact
kernel-level reference the tests compare against.

Mat-vec streams every weight byte once (memory-bound). `matvecs` multiplies B activation rows in one
pass over the weights: each block is read and decoded once and dotted with every row, and row t of
the result is bit for bit `matvec(W, X[t])` (same activation rounding, same order of additions), so
a sequence decoded in a batch gets exactly the tokens it gets alone. Mat-mul below
`gemm_min_tokens(type)` tokens is that same B-row mat-vec; from there on it decodes a tile of rows
to float32 once per call (into a `Workspace`'s buffers, ~1 MB so they stay in L2), packs it into
32-row panels and runs a register-blocked float32 GEMM over it (compute-bound); or, integer GEMM,
quantizes the activation rows once and decodes each tile to 16-row panels of 8-bit codes (~512 KB).
"""

from __future__ import annotations

import os

import numba
import numpy as np

from ..errors import BadInputError, UnsupportedError
from ..gguf.constants import TYPE_INFO, GGMLType
from .kernels import FORMATS, gemm_int8, gemm_nt, gemm_panels, pack_panels
from .kernels.int8_kquants import (expert_matvecs_q4_k_kernel_order, expert_matvecs_q4_k_kernel_order_serial,
                                   matvec_q4_k_kernel_order, matvec_q4_k_kernel_order_serial)
from .kernels.panel_int8 import PANEL_KINDS, WIDE_ROW_LAYOUT, rows_wide, rows_wide_serial

__all__ = ["QuantizedMatrix", "Workspace", "matvec", "matvecs", "expert_matvecs", "matmul", "matmul_segments",
           "gemm_min_tokens", "has_int8_kernel", "dequantize_rows",
           "set_threads", "get_threads", "default_threads", "supported_types", "set_activations", "get_activations"]

# Mat-vecs over fewer weight bytes run on the calling thread: entering numba's thread pool costs
# ~25 us at 2 threads, what ~100 KB of weights take to stream on one core.
SERIAL_MATVEC_BYTES = 128 * 1024
# Below this many tokens `matmul` runs the B-row mat-vec (`matvecs`), from it on the GEMM (decode
# and pack every weight tile, then a float32 GEMM). scripts/bench_matvecs.py, demo model matrices
# (all of a type summed), 1 thread, AMD EPYC (Zen 3, AVX2, no AVX-512), ms matvecs / GEMM:
#          n=8        16         32         48         64         128        256
#   Q4_K   7.5/46     16/66      31/81      43/101     59/137     146/260    447/920
#   Q6_K   4.3/29     6.6/31     13/44      24/57      63/159     130/257    230/286
#   Q5_0   31/119     50/115     88/192     166/262    321/594    695/837    1437/1672
#   Q8_0   73/293     154/536    307/546    466/776    (with the 178 MB output matrix)
#   Q4_0   15/103     37/152     99/311     138/347    145/469    358/680    887/1380
#   F16    64/213     179/141    151/362    391/522    448/598    1143/1072  1561/1640
#   float activations (n = 8, 16, 32, 48): Q4_K 13/50, 35/68, 51/81, 87/113; Q6_K 8/26, 16/35,
#   41/44, 62/56; Q5_0 33/98, 67/129, 184/341, 354/384; Q4_0 38/182, 45/131, 104/181, 181/195;
#   F16 33/87, 66/117, 127/152, 176/180.
#   2 threads, int8 (n = 8, 16, 32, 48): Q6_K 2.9/18, 5.6/23, 11/35, 17/35; Q5_0 16/137, 42/165,
#   60/178, 87/200; Q4_0 9.7/69, 19/96, 39/179, 54/156; F16 18/109, 34/127, 76/138, 108/114;
#   Q4_K 25/82, 28/83 at 32, 48 (its 8 and 16 were other processes' noise on the shared machine).
# The B-row mat-vec wins up to ~48 tokens (float activations) and far beyond (8-bit) for every type
# at 1 and 2 threads. One threshold for all types, 32: there the float32 B-row mat-vec and the GEMM
# begin to meet (Q6_K 41/44), and from there on a "float" prompt is a float32 GEMM; on an AVX512
# CPU the GEMM's micro-kernel is several times faster (kernels/gemm.py), so it only gains there.
# (The default prompt path, the integer GEMM, has its own thresholds: INT8_GEMM_MIN_TOKENS.)
GEMM_MIN_TOKENS = 32
# The integer GEMM (gemm="int8") against the same 8-bit B-row mat-vec: `scripts/bench_matvecs.py
# --mode int8 --no-columns --threads 1`, demo model matrices (a type's summed), Xeon (Sapphire
# Rapids, AVX512-VNNI), 1 thread, ms mat-vec / integer GEMM:
#          n=8        12         16         24         32         48         64
#   Q4_K   3.7/6.9    5.7/6.7    7.0/9.1    11.7/8.3   13.9/10.0  21.4/11.7  27.6/15.1
#   Q6_K   1.6/3.9    2.6/3.7    3.3/4.7    5.2/5.1    6.7/5.8    9.9/6.8    13.2/8.9
#   Q5_0   12.9/18.3  24.0/21.4  35.9/22.3  47.4/26.5  56.7/25.8  83.0/29.6  101.7/37.4
#   Q4_0   8.6/11.1   14.4/10.9  20.4/13.9  34.7/13.9  39.2/16.7  59.7/19.7  78.6/25.9
#   Q8_0   28.3/46.8  45.8/45.8  78.4/55.7  119/57     118/66     (with the 168 MB output matrix)
# so it takes over at 24 tokens for the K-quants (Q4_K, Q5_K, Q6_K) and 16 for the 32-weight blocks
# (by weights per block):
INT8_GEMM_MIN_TOKENS = {256: 24, 32: 16}
# float32 bytes of one decoded weight tile: fits the per-core L2 next to the activation rows.
GEMM_TILE_BYTES = 1 << 20
# uint8 bytes of one decoded tile for the integer GEMM (kernels/gemm_int8.py): its codes (K bytes
# per row) stay in L2 next to the quantized activation rows.
GEMM_INT8_TILE_BYTES = 1 << 19
# The GEMM micro-kernel covers 32 weight rows at a time (kernels/gemm.py).
COLUMNS_PER_TILE_STEP = 32
# "int8": mat-vecs quantize activations to 8 bits where the weight type has an integer kernel.
ACTIVATION_MODES = ("int8", "float")
# How `matmul` computes from GEMM_MIN_TOKENS tokens on: "float" (float32 GEMM) or "int8" (integer
# GEMM, kernels/gemm_int8.py, where the weight type has one).
GEMM_KINDS = ("float", "int8")
_activations_mode = "int8"


def set_activations(mode: str) -> None:
    """How mat-vecs treat activations: "int8" (llama.cpp's arithmetic, faster) or "float"."""
    global _activations_mode
    if mode not in ACTIVATION_MODES:
        raise BadInputError(f"activations must be one of {', '.join(ACTIVATION_MODES)}, got {mode!r}")
    _activations_mode = mode


def get_activations() -> str:
    return _activations_mode


def supported_types() -> list[GGMLType]:
    return list(FORMATS)


class QuantizedMatrix:
    """A (n_rows, n_cols) weight matrix stored as ggml blocks, one row per `raw` row.

    `raw` is a uint8 (n_rows, row_bytes) view (e.g. `GGUFReader.tensor_bytes`); it is never copied.
    """

    __slots__ = ("raw", "ggml_type", "n_rows", "n_cols", "format", "weights", "x_shape", "panels", "wide_decode",
                 "kernel_rows")

    def __init__(self, raw: np.ndarray, ggml_type: GGMLType, n_cols: int):
        ggml_type = GGMLType(ggml_type)
        fmt = FORMATS.get(ggml_type)
        if fmt is None:
            raise UnsupportedError(f"matrix multiplication with {ggml_type.name} weights is not supported "
                                   f"(supported: {', '.join(t.name for t in FORMATS)})")
        info = TYPE_INFO[ggml_type]
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise BadInputError(f"{ggml_type.name} weights must be a 2-D uint8 array, got {raw.dtype} {raw.shape}")
        if n_cols <= 0 or n_cols % info.block_size or raw.shape[1] != info.row_bytes(n_cols):
            raise BadInputError(f"{ggml_type.name} rows of {n_cols} values need {info.row_bytes(n_cols)} bytes "
                                f"(blocks of {info.block_size}), got {raw.shape[1]}")
        if not raw.flags.c_contiguous:
            raise BadInputError(f"{ggml_type.name} weight rows must be contiguous in memory")
        self.raw, self.ggml_type, self.n_rows, self.n_cols, self.format = raw, ggml_type, raw.shape[0], n_cols, fmt
        if fmt.x_group:
            weights = raw.reshape(raw.shape[0], n_cols // info.block_size, info.block_bytes)
        else:
            weights = raw.view(fmt.element)
        # Always read-only, so every kernel is compiled for one array type whatever the source.
        weights = weights.view()
        weights.flags.writeable = False
        self.weights = weights
        # shape of one activation row as the kernels index it, e.g. (n_blocks, 8, 32) for Q4_K
        group = fmt.x_group
        self.x_shape = (n_cols // int(np.prod(group)),) + group if group else (n_cols,)
        # The rows repacked for the panel kernel (engine/panels.py `pack_panels`), None: not packed.
        self.panels = None
        # Decoded tokens' mat-vecs sum each row in float64, packed or not (engine/panels.py
        # `WIDE_DECODE`: a Q8_0 / Q5_0 layer matrix where the CPU has VNNI).
        self.wide_decode = False
        # Q4_K rows repacked into the 8-bit mat-vec's order (engine/panels.py `pack_kernel_order`),
        # read-only (rows, n_blocks, 148); None: not repacked.
        self.kernel_rows = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols

    def rows(self, start: int, stop: int) -> "QuantizedMatrix":
        """Rows start..stop-1 as a QuantizedMatrix over the same bytes (e.g. one MoE expert)."""
        if not 0 <= start <= stop <= self.n_rows:
            raise BadInputError(f"rows {start}:{stop} out of range for a {self.n_rows}-row matrix")
        return QuantizedMatrix(self.raw[start:stop], self.ggml_type, self.n_cols)

    def __repr__(self) -> str:
        return f"QuantizedMatrix({self.ggml_type.name}, {self.n_rows}x{self.n_cols})"

    def _x_view(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.x_shape)


def _activations(W: QuantizedMatrix, x: np.ndarray, ndim: int, what: str) -> np.ndarray:
    if x.ndim != ndim or x.shape[-1] != W.n_cols:
        raise BadInputError(f"{what} of shape {x.shape} does not fit a {W.n_rows}x{W.n_cols} matrix")
    if x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    return np.ascontiguousarray(x, dtype=np.float32)


def _output(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise BadInputError(f"output buffer must be contiguous float32 {shape}, got {out.dtype} {out.shape}")
    return out


def matvec(W: QuantizedMatrix, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """out[r] = W[r] . x for x float32 (n_cols,); returns out (n_rows,)."""
    x = _activations(W, x, 1, "x")
    out = _output(out, (W.n_rows,))
    if _uses_panels(W):
        W.panels.matvecs(x.reshape(1, -1), out.reshape(1, -1))
    elif W.n_rows:
        kernel, weights = _matvec_kernel(W, 1)
        kernel(weights, W._x_view(x), out)
    return out


def _matvec_kernel(W: QuantizedMatrix, n_columns: int):
    """(kernel, weights): the mat-vec kernel for W's type and the activation mode, and the rows it
    reads (in "int8" mode a repacked matrix's `kernel_rows`, else the rows as stored); it takes one
    x or B rows. Its serial and parallel versions give the same bits."""
    fmt = W.format
    serial = _serial(W, n_columns)
    if _activations_mode == "int8" and W.kernel_rows is not None:
        return (matvec_q4_k_kernel_order_serial if serial else matvec_q4_k_kernel_order), W.kernel_rows
    if _activations_mode == "int8" and fmt.matvec_int8 is not None:
        return (fmt.matvec_int8_serial if serial else fmt.matvec_int8), W.weights
    return (fmt.matvec_serial if serial else fmt.matvec), W.weights


def _serial(W: QuantizedMatrix, n_columns: int) -> bool:
    """Whether W's mat-vec of n_columns rows runs on the calling thread: a parallel region costs
    more than it saves on one thread or on a small matrix (B rows of activations: about B times
    the work of one)."""
    return W.raw.nbytes * n_columns < SERIAL_MATVEC_BYTES or numba.get_num_threads() == 1


def matvecs(W: QuantizedMatrix, X: np.ndarray, out: np.ndarray | None = None, decoding: bool = False) -> np.ndarray:
    """out[t, r] = W[r] . X[t] for X float32 (B, n_cols), any B; returns out (B, n_rows).

    One pass over the weights for all B rows (batched decoding: B sequences, one new token each).
    Row t of the result equals `matvec(W, X[t])` bit for bit, in either activation mode (a matrix
    with panels: the panel kernel in "int8" mode, kernels/panel_int8.py). decoding: the rows are
    decoded tokens, and a matrix marked `wide_decode` sums them in float64 instead (in "int8" mode;
    packed or not, the same bits; row t still does not depend on the other rows)."""
    X = _activations(W, X, 2, "X")
    out = _output(out, (X.shape[0], W.n_rows))
    wide = decoding and W.wide_decode and _activations_mode == "int8"
    if _uses_panels(W):
        if X.shape[0]:
            W.panels.matvecs(X, out, wide)
    elif wide and W.n_rows and X.shape[0]:
        kernel = rows_wide_serial if _serial(W, X.shape[0]) else rows_wide
        kernel(W.weights, X, out, *WIDE_ROW_LAYOUT[PANEL_KINDS[W.ggml_type]])
    elif W.n_rows and X.shape[0]:
        kernel, weights = _matvec_kernel(W, X.shape[0])
        kernel(weights, X, out)
    return out


def expert_matvecs(Ws: list[QuantizedMatrix], X: np.ndarray, out: np.ndarray | None = None,
                   decoding: bool = False) -> np.ndarray:
    """out[i] = Ws[i] @ X[i] for same-shaped matrices (a MoE token's experts: row i of X the input
    of expert i), each row the bits `matvecs(Ws[i], X[i:i + 1], ..., decoding)` gives it. Experts
    repacked at load (Q4_K in the kernel's order, panels) run in one call, every expert's rows in
    one parallel region; other types one `matvecs` each."""
    if not Ws or len(Ws) != len(X) or any(W.shape != Ws[0].shape for W in Ws):
        raise BadInputError(f"{len(X)} activation rows for {len(Ws)} matrices of shapes "
                            f"{sorted({W.shape for W in Ws})}: expected one row per matrix, all of one shape")
    X = _activations(Ws[0], X, 2, "X")
    out = _output(out, (X.shape[0], Ws[0].n_rows))
    if all(_uses_panels(W) for W in Ws):
        wides = {decoding and W.wide_decode for W in Ws}  # as `matvecs` decides it per matrix
        if len(wides) == 1 and Ws[0].panels.expert_matvecs([W.panels for W in Ws], X, out, wides.pop()):
            return out
    elif _activations_mode == "int8" and all(W.kernel_rows is not None for W in Ws):
        serial = _serial(Ws[0], len(Ws))  # as much work as one expert's mat-vec of len(Ws) columns
        kernel = expert_matvecs_q4_k_kernel_order_serial if serial else expert_matvecs_q4_k_kernel_order
        kernel(tuple(W.kernel_rows for W in Ws), X, out)
        return out
    for i, W in enumerate(Ws):
        matvecs(W, X[i:i + 1], out[i:i + 1], decoding)
    return out


def _uses_panels(W: QuantizedMatrix) -> bool:
    """Whether W's mat-vecs run on its panels (8-bit activations; "float" mode reads its rows)."""
    return W.panels is not None and _activations_mode == "int8"


def has_int8_kernel(ggml_type: GGMLType) -> bool:
    """Whether mat-vecs with this weight type round activations to 8 bits (in "int8" mode)."""
    fmt = FORMATS.get(GGMLType(ggml_type))
    return fmt is not None and fmt.matvec_int8 is not None


def gemm_min_tokens(ggml_type: GGMLType, gemm: str = "float") -> int:
    """Tokens from which `matmul` runs the GEMM rather than the B-row mat-vec, for a weight type
    and GEMM kind (float32: the same for every type as measured so far, see GEMM_MIN_TOKENS;
    integer: INT8_GEMM_MIN_TOKENS)."""
    spec = gemm_int8.SPECS.get(ggml_type)
    if gemm == "int8" and spec is not None:
        return INT8_GEMM_MIN_TOKENS[spec.block_size]
    return GEMM_MIN_TOKENS


class Workspace:
    """Reusable float32 buffers for `matmul`'s GEMM path (a decoded weight tile and its packed
    panels, ~1 MB each). Keep one per engine thread and pass it to every `matmul` call: not
    thread-safe, and the buffers only grow."""

    __slots__ = ("_buffers",)

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def buffer(self, name: str, n_rows: int, n_cols: int, dtype=np.float32) -> np.ndarray:
        """A (n_rows, n_cols) view of the buffer `name` of dtype (float32 unless said; contents
        undefined)."""
        buf = self._buffers.get(name)
        if buf is None or buf.size < n_rows * n_cols or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(n_rows * n_cols, dtype)
        return buf[: n_rows * n_cols].reshape(n_rows, n_cols)


def matmul(W: QuantizedMatrix, X: np.ndarray, out: np.ndarray | None = None,
           workspace: Workspace | None = None, gemm: str = "float") -> np.ndarray:
    """out[t, r] = W[r] . X[t] for X float32 (n_tokens, n_cols); returns out (n_tokens, n_rows).

    Fewer than `gemm_min_tokens(W.ggml_type)` tokens: `matvecs`. More: a GEMM, with its tile
    buffers from `workspace` (None: temporaries for this call): `gemm` "float" the float32 GEMM,
    "int8" the integer GEMM where the weight type has one (kernels/gemm_int8.py: activations
    rounded to 8 bits as the int8 mat-vecs round them, whatever `get_activations()` says)."""
    return matmul_segments(W, X, out, [0, len(X)], workspace, gemm)


def matmul_segments(W: QuantizedMatrix, X: np.ndarray, out: np.ndarray | None = None, bounds=None,
                    workspace: Workspace | None = None, gemm: str = "float") -> np.ndarray:
    """`matmul` of each row range bounds[i]:bounds[i+1] of X on its own (several sequences' prompt
    chunks): the same bits as one `matmul` call per range, but each weight tile of the GEMM is
    decoded and packed once for all the ranges that run it."""
    if gemm not in GEMM_KINDS:
        raise BadInputError(f"gemm must be one of {', '.join(GEMM_KINDS)}, got {gemm!r}")
    X = _activations(W, X, 2, "X")
    n_tokens = X.shape[0]
    out = _output(out, (n_tokens, W.n_rows))
    bounds = [0, n_tokens] if bounds is None else [int(b) for b in bounds]
    if bounds[0] != 0 or bounds[-1] != n_tokens or any(a > b for a, b in zip(bounds, bounds[1:])):
        raise BadInputError(f"segment bounds {bounds} do not split {n_tokens} rows")
    long_segments = []
    for a, b in zip(bounds, bounds[1:]):
        if b - a >= gemm_min_tokens(W.ggml_type, gemm):
            long_segments.append((a, b))
        elif b > a:
            matvecs(W, X[a:b], out[a:b])
    if long_segments:
        ws = workspace if workspace is not None else Workspace()
        if gemm == "int8" and W.ggml_type in gemm_int8.SPECS:
            _gemm_int8(W, X, out, ws, long_segments)
        else:
            _gemm(W, X, out, ws, long_segments)
    return out


def _gemm_int8(W: QuantizedMatrix, X: np.ndarray, out: np.ndarray, ws: Workspace,
               segments: list[tuple[int, int]]) -> np.ndarray:
    """matmul's integer GEMM path (kernels/gemm_int8.py) over row ranges of X: the rows of X the
    segments cover quantized once, then per tile of weight rows: decode it into VNNI panels once
    and multiply every segment by it."""
    spec = gemm_int8.SPECS[W.ggml_type]
    n_cols = W.n_cols
    n_sub = n_cols // spec.sub_len
    n_tokens = X.shape[0]
    xq = ws.buffer("xq", n_tokens, n_cols, np.int8)
    xscale = ws.buffer("xscale", n_tokens, n_sub)
    xinit = ws.buffer("xinit", n_tokens, n_sub, np.int32)
    xmin = ws.buffer("xmin", n_tokens, n_sub)
    for a, b in segments:
        gemm_int8.activations(spec, X[a:b], xq[a:b], xscale[a:b], xinit[a:b], xmin[a:b])
    step = gemm_int8.ROWS_PER_MICRO
    tile = max(step, GEMM_INT8_TILE_BYTES // n_cols // step * step)
    decode, kernel = gemm_int8.DECODERS[W.ggml_type], gemm_int8.gemm_kernel(spec)
    scratch = ws.buffer("scratch", n_tokens, step)
    for start in range(0, W.n_rows, tile):
        n_rows = min(tile, W.n_rows - start)
        n_panels = -(-n_rows // step) * gemm_int8.PANELS_PER_MICRO
        codes = ws.buffer("codes", n_panels, n_cols * gemm_int8.ROWS_PER_PANEL, np.uint8)
        scales = ws.buffer("scales", n_panels, n_sub * gemm_int8.ROWS_PER_PANEL)
        mins = ws.buffer("mins", n_panels, n_sub * gemm_int8.ROWS_PER_PANEL) if spec.has_min else scales
        if W.panels is not None:  # the same tile from the packed rows (the map's pages stay released)
            W.panels.decode_tile(start, codes, scales)
        elif W.kernel_rows is not None:  # the same again, from the rows in the mat-vec's order
            gemm_int8.decode_q4_k_kernel_order(W.kernel_rows, start, codes, scales, mins)
        else:
            decode(W.weights, start, codes, scales, mins)
        for a, b in segments:
            kernel(xq[a:b], xscale[a:b], xinit[a:b], xmin[a:b], codes, scales, mins, out[a:b], start, n_rows,
                   scratch[a:b])
    return out


def _gemm(W: QuantizedMatrix, X: np.ndarray, out: np.ndarray, ws: Workspace,
          segments: list[tuple[int, int]]) -> np.ndarray:
    """matmul's float32 GEMM path over row ranges of X (X, out checked by the caller)."""
    # Rows in tiles of a multiple of 32: decode, pack into 32-row k-major panels, micro-kernel GEMM.
    strip = COLUMNS_PER_TILE_STEP
    tile = max(strip, GEMM_TILE_BYTES // (4 * W.n_cols) // strip * strip)
    full = W.n_rows - W.n_rows % strip
    for start in range(0, full, tile):
        stop = min(full, start + tile)
        decoded = ws.buffer("rows", stop - start, W.n_cols)
        W.format.dequant(W.weights[start:stop], _row_view(W, decoded))
        panels = ws.buffer("panels", stop - start, W.n_cols).reshape((stop - start) // strip, W.n_cols, strip)
        pack_panels(decoded, panels)
        for a, b in segments:
            gemm_panels(X[a:b], panels, out[a:b], start)
    if full < W.n_rows:  # the last n_rows % 32 rows: dot-product GEMM on untransposed rows
        decoded = ws.buffer("rows", W.n_rows - full, W.n_cols)
        W.format.dequant(W.weights[full:], _row_view(W, decoded))
        for a, b in segments:
            gemm_nt(X[a:b], decoded, out[a:b], full)
    return out


def _row_view(W: QuantizedMatrix, rows: np.ndarray) -> np.ndarray:
    """float32 (n, n_cols) -> the (n, *activation view) shape a dequant kernel writes."""
    return rows.reshape((rows.shape[0],) + W.x_shape)


def dequantize_rows(W: QuantizedMatrix, start: int, stop: int) -> np.ndarray:
    """Rows start..stop-1 of W decoded to float32 (stop-start, n_cols), e.g. token embeddings."""
    sub = W.rows(start, stop)
    out = np.empty((stop - start, W.n_cols), np.float32)
    if stop > start:
        W.format.dequant(sub.weights, _row_view(W, out))
    return out


def default_threads() -> int:
    """Physical cores available to this process (hyper-threads share one core's vector units)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or available
    except Exception:  # psutil is a dependency, but a missing sysfs must not break the engine
        physical = available
    return max(1, min(available, physical, numba.config.NUMBA_NUM_THREADS))


def set_threads(n: int) -> None:
    """Threads the kernels use (numba's pool for the calling thread); 1 is cheap."""
    if n < 1:
        raise BadInputError(f"thread count must be at least 1, got {n}")
    numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))


def get_threads() -> int:
    return numba.get_num_threads()
