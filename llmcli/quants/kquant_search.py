"""The scale searches behind ggml's k-quants, reproduced operation for operation.

ggml's reference quantizers (`quantize_row_q*_K_ref`, ggml-quants.c) pick each sub-block's scale
(and min) with small iterative searches. A block is byte-identical only if every search takes the
same branches, so these functions follow ggml's arithmetic exactly:

* every value and every accumulator is float32 and sums run in ggml's order (numba would promote
  float32 mixed with Python floats or int64 to float64, so constants are np.float32 globals and
  integers are cast with F32() before they meet a float);
* `nearest_int` is ggml's magic-number rounding (round half to even of the float32 value), done on
  the float's bit pattern so that even NaN and out-of-range inputs give ggml's result;
* comparisons keep ggml's NaN behaviour (`a > b` is false when either is NaN);
* `error_model="numpy"`: x/0 gives inf/NaN as in C instead of raising.

Only the variants that llama-quantize runs without an importance matrix are here: make_qx_quants
with rmse_type 1 and x*x weights (Q6_K), make_q3_quants with rmse (Q3_K), make_qkx2_quants (Q2_K,
Q4_K, Q5_K).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .half import f32_bits

F32 = np.float32
MAGIC = F32(12582912.0)          # 1.5 * 2**23: adding it leaves round-half-even(x) in the low mantissa bits
GROUP_MAX_EPS = F32(1e-15)       # below this a group counts as all zero
ZERO = F32(0.0)
ONE = F32(1.0)
TENTH = F32(0.1)

JIT = dict(cache=True, error_model="numpy")


@njit(**JIT)
def nearest_int(fval):
    """ggml's nearest_int: the int32 nearest to float32 fval, ties to even."""
    bits = f32_bits(fval + MAGIC)
    return np.int32(np.int32(bits & np.uint32(0x007FFFFF)) - np.int32(0x00400000))  # stay int32


@njit(**JIT)
def make_q3_quants_rmse(x, nmax, L):
    """Symmetric scale with levels -nmax..nmax-1, refined level by level (ggml make_q3_quants, do_rmse).

    Writes L[i] = level + nmax (0 for an all-zero group) and returns the scale."""
    n = x.shape[0]
    vmax = ZERO
    amax = ZERO
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return ZERO
    iscale = -F32(nmax) / vmax
    sumlx = ZERO
    suml2 = ZERO
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l
        w = x[i] * x[i]
        fl = F32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            fli = F32(L[i])
            slx = sumlx - w * x[i] * fli
            if slx > ZERO:
                sl2 = suml2 - w * fli * fli
                new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    fnl = F32(new_l)
                    slx += w * x[i] * fnl
                    sl2 += w * fnl * fnl
                    if sl2 > ZERO and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > ZERO else ZERO



@njit(**JIT)
def make_qkx2_quants(x, weights, nmax, L, Laux, rmin, rdelta, nstep, use_mad):
    """Affine fit x ~ scale * L - the_min with levels 0..nmax (ggml make_qkx2_quants).

    Tries nstep+1 trial scales around nmax/(max-min), keeps the one with the least weighted error
    (absolute if use_mad, else squared). Writes L; returns (scale, the_min)."""
    n = x.shape[0]
    vmin = x[0]
    vmax = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < vmin:
            vmin = x[i]
        if x[i] > vmax:
            vmax = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if vmin > ZERO:
        vmin = ZERO
    if vmax == vmin:
        for i in range(n):
            L[i] = 0
        return ZERO, -vmin
    fnmax = F32(nmax)
    top = np.int32(nmax)
    iscale = fnmax / (vmax - vmin)
    scale = ONE / iscale
    best_error = ZERO
    for i in range(n):
        l = max(np.int32(0), min(top, nearest_int(iscale * (x[i] - vmin))))
        L[i] = l
        diff = scale * F32(l) + vmin - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -vmin
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * F32(step) + fnmax) / (vmax - vmin)
        sum_l = ZERO
        sum_l2 = ZERO
        sum_xl = ZERO
        for i in range(n):
            l = max(np.int32(0), min(top, nearest_int(iscale * (x[i] - vmin))))
            Laux[i] = l
            w = weights[i]
            fl = F32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > ZERO:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > ZERO:
                this_min = ZERO
                this_scale = sum_xl / sum_l2
            cur_error = ZERO
            for i in range(n):
                diff = this_scale * F32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                vmin = this_min
    return scale, -vmin


# ---------------------------------------------------------------------------------------------
# Lane searches: all sub-blocks of a super-block at once.
#
# ggml runs one search per sub-block, and every sum in it is a sequential float32 chain, so a
# single search cannot be vectorised without changing its result. The S sub-blocks of a block are
# independent, though: with the block transposed to xT[i, s] (element i of sub-block s), the inner
# loop over s runs S exact copies of ggml's scalar arithmetic side by side (one SIMD lane each),
# every lane keeping ggml's order. Branches become per-lane selects, which take the same decisions.
#
#   x  (256,)  = | sub-block 0: n values | sub-block 1 | ... | sub-block S-1 |
#   xT (n, S)  : xT[i, s] = x[n*s + i]
#
# S is baked into each compiled function (a closure constant): with a runtime lane count LLVM
# vectorised only for S >= 16 and fell back to scalar code below. `st` is caller-owned scratch,
# (16, S) float32, for the per-lane state.


def qx_quants_rmse1_lanes(S: int):
    """make_qx_quants_rmse1_lanes for S sub-blocks (see below)."""

    @njit(**JIT)
    def make_qx_quants_rmse1_lanes(xT, nmax, levels, scales, laux, st):
        """ggml's make_qx_quants (rmse_type 1, weights x*x) on every column of xT.

        Symmetric fit x ~ scale * (level - nmax), levels 0..2*nmax-1 (0 for an all-zero group),
        the best of 19 trial scales. Writes levels (n, S) int8 and scales (S,); laux is scratch."""
        n = xT.shape[0]
        vmax, amax, iscale, scale = st[0], st[1], st[2], st[3]
        best, sumlx, suml2, take = st[4], st[5], st[6], st[7]
        lo = np.int32(-nmax)
        hi = np.int32(nmax - 1)
        off = np.int32(nmax)
        fnmax = F32(nmax)
        for s in range(S):
            vmax[s] = ZERO
            amax[s] = ZERO
        for i in range(n):
            for s in range(S):
                xi = xT[i, s]
                ax = abs(xi)
                bigger = ax > amax[s]
                amax[s] = ax if bigger else amax[s]
                vmax[s] = xi if bigger else vmax[s]
        for s in range(S):
            iscale[s] = -fnmax / vmax[s]
            sumlx[s] = ZERO
            suml2[s] = ZERO
        for i in range(n):
            for s in range(S):
                xi = xT[i, s]
                l = max(lo, min(hi, nearest_int(iscale[s] * xi)))
                levels[i, s] = l + off
                w = xi * xi
                fl = F32(l)
                sumlx[s] += w * xi * fl
                suml2[s] += w * fl * fl
        for s in range(S):
            scale[s] = sumlx[s] / suml2[s] if suml2[s] != ZERO else ZERO
            best[s] = scale[s] * sumlx[s]
        for step in range(-9, 10):
            if step == 0:
                continue
            num = -(fnmax + TENTH * F32(step))
            for s in range(S):
                iscale[s] = num / vmax[s]
                sumlx[s] = ZERO
                suml2[s] = ZERO
            for i in range(n):
                for s in range(S):
                    xi = xT[i, s]
                    l = max(lo, min(hi, nearest_int(iscale[s] * xi)))
                    laux[i, s] = l + off
                    w = xi * xi
                    fl = F32(l)
                    sumlx[s] += w * xi * fl
                    suml2[s] += w * fl * fl
            for s in range(S):
                better = suml2[s] > ZERO and sumlx[s] * sumlx[s] > best[s] * suml2[s]
                take[s] = ONE if better else ZERO
                if better:
                    scale[s] = sumlx[s] / suml2[s]
                    best[s] = scale[s] * sumlx[s]
            for i in range(n):
                for s in range(S):
                    if take[s] != ZERO:
                        levels[i, s] = laux[i, s]
        for s in range(S):
            if amax[s] < GROUP_MAX_EPS:                      # ggml returns early: all zero
                scales[s] = ZERO
                for i in range(n):
                    levels[i, s] = 0
            else:
                scales[s] = scale[s]

    return make_qx_quants_rmse1_lanes
