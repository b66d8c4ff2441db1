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

The variants llama-quantize runs, each as a "lane" search over many sub-blocks at once (see
below): make_q3_quants with rmse (Q3_K), make_qx_quants with rmse_type 1 (Q6_K with x*x weights;
with importance weights also Q3_K, Q4_0 and Q5_0), make_qkx2_quants (Q2_K, Q4_K, Q5_K; and, with
importance weights, make_qkx3_quants - the same search once weights are given - for Q2_K, Q4_K,
Q5_K, Q4_1 and Q5_1). make_qp_quants, which only importance-weighted quantizing uses (the 6-bit
and 4-bit scales of Q4_K/Q5_K/Q2_K super-blocks), is a plain scalar search over 8 or 16 values.
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
FLT_MAX = F32(3.4028234663852886e38)

JIT = dict(cache=True, error_model="numpy")


@njit(**JIT)
def nearest_int(fval):
    """ggml's nearest_int: the int32 nearest to float32 fval, ties to even."""
    bits = f32_bits(fval + MAGIC)
    return np.int32(np.int32(bits & np.uint32(0x007FFFFF)) - np.int32(0x00400000))  # stay int32


@njit(inline="always")
def max_value(v, n):
    """ggml's running MAX(max, v[i]) over v[0:n], starting from v[0] (a NaN is kept only until a
    later value, as in C)."""
    m = v[0]
    for i in range(1, n):
        m = m if m > v[i] else v[i]
    return m


@njit(inline="always")
def max_abs(v):
    """ggml's running MAX(amax, fabsf(v[i])) over all of v (from 0 or from |v[0]|: the same)."""
    m = abs(v[0])
    for i in range(1, v.shape[0]):
        a = abs(v[i])
        m = m if m > a else a
    return m


@njit(inline="always")
def max_magnitude(v):
    """(the largest |v[i]|, the first v[i] of that magnitude, sign kept), as ggml looks for a
    block's extreme value (0, 0 when no |v[i]| exceeds 0, e.g. all zero or NaN)."""
    amax = ZERO
    vmax = ZERO
    for i in range(v.shape[0]):
        a = abs(v[i])
        if a > amax:
            amax = a
            vmax = v[i]
    return amax, vmax


@njit(inline="always")
def min_max(v):
    """(min, max) of v as ggml's `if (v < min) min = v; if (v > max) max = v;` from +-FLT_MAX."""
    vmin = FLT_MAX
    vmax = -FLT_MAX
    for i in range(v.shape[0]):
        if v[i] < vmin:
            vmin = v[i]
        if v[i] > vmax:
            vmax = v[i]
    return vmin, vmax


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
# What it takes for LLVM to vectorise the lane loops (each measured): S >= 16 at run time (a
# compile-time S got unrolled into scalar code; S = 8 stayed scalar), so Q4_K/Q5_K search two
# blocks at once; and few arrays per loop, or LLVM's runtime alias checks exceed its limit and it
# keeps the scalar loop. Then the searches run 1.3-2.5x faster than ggml's C on one core.
# `st` is caller-owned scratch, (16, S) float32, for the per-lane state.


@njit(inline="always")
def _max_magnitude_lanes(xT, amax, vmax):
    """Per lane s: amax[s] = the largest |xT[i, s]|, vmax[s] = the first value of it, sign kept
    (`max_magnitude` of every column)."""
    n, S = xT.shape
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


@njit(inline="always")
def _round_and_fit_lanes(xT, wT, iscale, lo, hi, off, levels, sumlx, suml2):
    """Per lane s: levels[i, s] = off + x / scale rounded and clamped to lo..hi (x * iscale[s]),
    and the weighted sums sumlx[s] = sum w x l, suml2[s] = sum w l l of that fit, from zero."""
    n, S = xT.shape
    for s in range(S):
        sumlx[s] = ZERO
        suml2[s] = ZERO
    for i in range(n):
        for s in range(S):
            xi = xT[i, s]
            l = max(lo, min(hi, nearest_int(iscale[s] * xi)))
            levels[i, s] = l + off
            w = wT[i, s]
            fl = F32(l)
            sumlx[s] += w * xi * fl
            suml2[s] += w * fl * fl


@njit(**JIT)
def make_qx_quants_lanes(xT, wT, nmax, levels, scales, laux, st):
    """ggml's make_qx_quants (rmse_type 1) on every column of xT with weights wT: x*x when no
    weights are given (ggml's default for rmse_type 1), else the importance weights.

    Symmetric fit x ~ scale * (level - nmax), levels 0..2*nmax-1 (0 for an all-zero group),
    the best of 19 trial scales. Writes levels (n, S) int8 and scales (S,); laux is scratch."""
    n, S = xT.shape
    vmax, amax, iscale, scale = st[0], st[1], st[2], st[3]
    best, sumlx, suml2, take = st[4], st[5], st[6], st[7]
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    off = np.int32(nmax)
    fnmax = F32(nmax)
    _max_magnitude_lanes(xT, amax, vmax)
    for s in range(S):
        iscale[s] = -fnmax / vmax[s]
    _round_and_fit_lanes(xT, wT, iscale, lo, hi, off, levels, sumlx, suml2)
    for s in range(S):
        scale[s] = sumlx[s] / suml2[s] if suml2[s] != ZERO else ZERO
        best[s] = scale[s] * sumlx[s]
    for step in range(-9, 10):
        if step == 0:
            continue
        num = -(fnmax + TENTH * F32(step))
        for s in range(S):
            iscale[s] = num / vmax[s]
        _round_and_fit_lanes(xT, wT, iscale, lo, hi, off, laux, sumlx, suml2)
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


@njit(**JIT)
def make_qkx2_quants_lanes(xT, wT, nmax, rmin, rdelta, nstep, use_mad, levels, scales, the_mins,
                           laux, st):
    """ggml's make_qkx2_quants on every column of xT (weights wT), nstep >= 1. With weights given,
    ggml's make_qkx3_quants is this same search (operation for operation) with use_mad false.

    Affine fit x ~ scale * level - the_min with levels 0..nmax: tries nstep+1 trial scales around
    nmax/(max-min) and keeps the one with the least weighted error (absolute if use_mad, else
    squared). Writes levels (n, S) uint8, scales (S,), the_mins (S,); laux (n, S) f32 is scratch.
    Each loop touches few arrays, so LLVM's runtime alias checks stay under its limit."""
    n, S = xT.shape
    vmin, vmax, sum_w, sum_x = st[0], st[1], st[2], st[3]
    iscale, scale, best, err = st[4], st[5], st[6], st[7]
    sl, sl2, sxl, tsc, tmn, take = st[8], st[9], st[10], st[11], st[12], st[13]
    flat = st[14]
    top = np.int32(nmax)
    fnmax = F32(nmax)
    for s in range(S):
        vmin[s] = xT[0, s]
        vmax[s] = xT[0, s]
        sum_w[s] = wT[0, s]
        sum_x[s] = wT[0, s] * xT[0, s]
    for i in range(1, n):
        for s in range(S):
            xi = xT[i, s]
            vmin[s] = xi if xi < vmin[s] else vmin[s]
            vmax[s] = xi if xi > vmax[s] else vmax[s]
    for i in range(1, n):
        for s in range(S):
            sum_w[s] += wT[i, s]
    for i in range(1, n):
        for s in range(S):
            sum_x[s] += wT[i, s] * xT[i, s]
    for s in range(S):
        vmin[s] = ZERO if vmin[s] > ZERO else vmin[s]
        flat[s] = ONE if vmax[s] == vmin[s] else ZERO       # ggml returns early: levels 0, scale 0
        iscale[s] = fnmax / (vmax[s] - vmin[s])
        scale[s] = ONE / iscale[s]
        best[s] = ZERO
        the_mins[s] = -vmin[s]
    for step in range(-1, nstep + 1):                       # -1: the starting point nmax/(max-min)
        if step >= 0:
            num = rmin + rdelta * F32(step) + fnmax
            for s in range(S):
                iscale[s] = num / (vmax[s] - vmin[s])
        for i in range(n):
            for s in range(S):
                l = max(np.int32(0), min(top, nearest_int(iscale[s] * (xT[i, s] - vmin[s]))))
                laux[i, s] = F32(l)
        if step < 0:
            for s in range(S):
                tsc[s] = scale[s]
                tmn[s] = vmin[s]
                take[s] = ONE
        else:
            for s in range(S):
                sl[s] = ZERO
                sl2[s] = ZERO
                sxl[s] = ZERO
            for i in range(n):
                for s in range(S):
                    sl[s] += wT[i, s] * laux[i, s]
            for i in range(n):
                for s in range(S):
                    sl2[s] += wT[i, s] * laux[i, s] * laux[i, s]
            for i in range(n):
                for s in range(S):
                    sxl[s] += wT[i, s] * laux[i, s] * xT[i, s]
            for s in range(S):
                D = sum_w[s] * sl2[s] - sl[s] * sl[s]
                this_scale = (sum_w[s] * sxl[s] - sum_x[s] * sl[s]) / D
                this_min = (sl2[s] * sum_x[s] - sl[s] * sxl[s]) / D
                if this_min > ZERO:
                    this_min = ZERO
                    this_scale = sxl[s] / sl2[s]
                tsc[s] = this_scale
                tmn[s] = this_min
                take[s] = ONE if D > ZERO else ZERO
        for s in range(S):
            err[s] = ZERO
        for i in range(n):
            for s in range(S):
                diff = tsc[s] * laux[i, s] + tmn[s] - xT[i, s]
                diff = abs(diff) if use_mad else diff * diff
                err[s] += wT[i, s] * diff
        for s in range(S):
            if step < 0:
                best[s] = err[s]                            # ggml's best_error, starting point
            else:
                better = take[s] != ZERO and flat[s] == ZERO and err[s] < best[s]
                take[s] = ONE if better else ZERO
                if better:
                    best[s] = err[s]
                    scale[s] = tsc[s]
                    vmin[s] = tmn[s]
        for i in range(n):
            for s in range(S):
                if take[s] != ZERO:
                    levels[i, s] = np.uint8(laux[i, s])
    for s in range(S):
        if flat[s] != ZERO:
            scales[s] = ZERO
            for i in range(n):
                levels[i, s] = 0
        else:
            scales[s] = scale[s]
            the_mins[s] = -vmin[s]


@njit(**JIT)
def make_q3_quants_rmse_lanes(xT, nmax, levels, scales, st):
    """ggml's make_q3_quants (do_rmse) on every column of xT.

    Symmetric fit with levels -nmax..nmax-1, then up to 5 passes that move single levels while the
    x*x-weighted fit improves. Writes levels (n, S) int8 as level + nmax (0 for an all-zero group)
    and scales (S,). Lanes keep passing until every lane is done: a pass that changes nothing leaves
    its lane's state as it was, so the extra passes ggml skips change nothing either."""
    n, S = xT.shape
    vmax, amax, iscale, sumlx, suml2, changed = st[0], st[1], st[2], st[3], st[4], st[5]
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    _max_magnitude_lanes(xT, amax, vmax)
    for s in range(S):
        iscale[s] = -F32(nmax) / vmax[s]
        sumlx[s] = ZERO
        suml2[s] = ZERO
    for i in range(n):
        for s in range(S):
            levels[i, s] = max(lo, min(hi, nearest_int(iscale[s] * xT[i, s])))
    for i in range(n):
        for s in range(S):
            xi = xT[i, s]
            fl = F32(levels[i, s])
            sumlx[s] += xi * xi * xi * fl
    for i in range(n):
        for s in range(S):
            xi = xT[i, s]
            fl = F32(levels[i, s])
            suml2[s] += xi * xi * fl * fl
    for _ in range(5):
        for s in range(S):
            changed[s] = ZERO
        for i in range(n):
            for s in range(S):
                xi = xT[i, s]
                w = xi * xi
                li = np.int32(levels[i, s])
                fli = F32(li)
                slx = sumlx[s] - w * xi * fli
                sl2 = suml2[s] - w * fli * fli
                new_l = max(lo, min(hi, nearest_int(xi * sl2 / slx)))
                fnl = F32(new_l)
                slx_new = slx + w * xi * fnl
                sl2_new = sl2 + w * fnl * fnl
                accept = (slx > ZERO and new_l != li and sl2_new > ZERO
                          and slx_new * slx_new * suml2[s] > sumlx[s] * sumlx[s] * sl2_new)
                if accept:
                    levels[i, s] = new_l
                    sumlx[s] = slx_new
                    suml2[s] = sl2_new
                    changed[s] = ONE
        any_changed = False
        for s in range(S):
            any_changed = any_changed or changed[s] != ZERO
        if not any_changed:
            break
    for s in range(S):
        if amax[s] < GROUP_MAX_EPS:                      # ggml returns early: all zero
            scales[s] = ZERO
            for i in range(n):
                levels[i, s] = 0
        else:
            scales[s] = sumlx[s] / suml2[s] if suml2[s] > ZERO else ZERO
            for i in range(n):
                levels[i, s] += nmax


@njit(**JIT)
def make_qp_quants(nmax, x, levels, w):
    """ggml's make_qp_quants: x >= 0 ~ scale * level, levels 0..nmax, weights w; returns the scale.

    The super-block scales of importance-weighted Q2_K/Q4_K/Q5_K: nine trial scales around
    nmax/max by weighted squared error, then up to five passes moving single levels while the
    weighted fit improves. `levels` is uint8 as in ggml, which matters when a level is negative (a
    negative sub-block scale): the stored byte wraps, and the error sums read the wrapped value
    back where ggml does."""
    n = x.shape[0]
    vmax = ZERO
    for i in range(n):
        vmax = vmax if vmax > x[i] else x[i]      # ggml's MAX(max, x[i])
    if vmax < GROUP_MAX_EPS:                       # all zero
        for i in range(n):
            levels[i] = 0
        return ZERO
    fnmax = F32(nmax)
    iscale = fnmax / vmax
    for i in range(n):
        levels[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = ONE / iscale
    best_mse = ZERO
    for i in range(n):
        diff = x[i] - scale * F32(levels[i])
        best_mse += w[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (TENTH * F32(step) + fnmax) / vmax
        scale_is = ONE / iscale_is
        mse = ZERO
        for i in range(n):
            l = min(np.int32(nmax), nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * F32(l)
            mse += w[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = ZERO
    suml2 = ZERO
    for i in range(n):
        l = min(np.int32(nmax), nearest_int(iscale * x[i]))
        levels[i] = l & 0xFF
        fl = F32(l)
        sumlx += w[i] * x[i] * fl
        suml2 += w[i] * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            wi = w[i]
            li = F32(levels[i])
            slx = sumlx - wi * x[i] * li
            sl2 = suml2 - wi * li * li
            if slx > ZERO and sl2 > ZERO:
                new_l = min(np.int32(nmax), nearest_int(x[i] * sl2 / slx))
                if new_l != np.int32(levels[i]):
                    fnl = F32(new_l)
                    slx += wi * x[i] * fnl
                    sl2 += wi * fnl * fnl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        levels[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > ZERO else ZERO
