"""Rotary position embedding tables: one (cos, sin) row per position, for every scaling type.

What ggml's `rope_yarn` computes per pair i of the n_rot rotated channels, at position p:

    theta_extrap = p * base^(-2i / n_rot) / freq_factor[i]     (freq_factors: llama3 `rope_freqs`,
                                                                 Phi-3 LongRoPE long/short factors)
    theta_interp = freq_scale * theta_extrap                     (linear: freq_scale = 1 / factor)
    YaRN (ext_factor != 0): ramp-mix interp and extrap between the correction dims, and
                            scale the magnitude by 1 + 0.1 ln(1 / freq_scale)
    cos, sin = cos(theta) * mscale, sin(theta) * mscale         (mscale = the attention factor)

The tables are built once at load for the whole context, so the per-token kernel only looks up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RopeConfig:
    n_rot: int
    freq_base: float
    freq_scale: float = 1.0
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    n_ctx_orig: int = 0


def _corr_dim(n_rot: int, n_ctx_orig: int, n_rotations: float, base: float) -> float:
    return n_rot * math.log(n_ctx_orig / (n_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_corr_dims(cfg: RopeConfig) -> tuple[float, float]:
    start = math.floor(_corr_dim(cfg.n_rot, cfg.n_ctx_orig, cfg.beta_fast, cfg.freq_base))
    end = math.ceil(_corr_dim(cfg.n_rot, cfg.n_ctx_orig, cfg.beta_slow, cfg.freq_base))
    return max(0.0, start), min(cfg.n_rot - 1.0, end)


def rope_tables(cfg: RopeConfig, n_ctx: int, freq_factors: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each float32 (n_ctx, n_rot / 2), in ggml's float32 arithmetic: the angle of
    pair i is p * theta_scale^i built by i float32 multiplications (ggml_rope_cache_init), not the
    exact p * base^(-2i / n_rot). At position 500 the two differ by ~1e-4 rad, which moved a
    trained model's attention output by 2e-3 relative in its first layer against llama.cpp's."""
    f32 = np.float32
    half = cfg.n_rot // 2
    theta_scale = f32(float(f32(cfg.freq_base)) ** float(f32(-2.0) / f32(cfg.n_rot)))  # powf
    freq_scale, mscale = f32(cfg.freq_scale), f32(cfg.attn_factor)
    factors = None if freq_factors is None else np.asarray(freq_factors, dtype=np.float32)[:half]
    if cfg.ext_factor != 0.0:
        low, high = (f32(v) for v in yarn_corr_dims(cfg))
        ext_factor = f32(cfg.ext_factor)
        mscale = mscale * (f32(1.0) + f32(0.1) * f32(math.log(float(f32(1.0) / freq_scale))))
    theta = np.arange(n_ctx, dtype=np.float32)  # theta_base = the position
    cos = np.empty((n_ctx, half), np.float32)
    sin = np.empty((n_ctx, half), np.float32)
    for i in range(half):
        extrap = theta if factors is None else theta / factors[i]
        angle = freq_scale * extrap
        if cfg.ext_factor != 0.0:  # ggml's ramp over the pair index i0 / 2 = i
            y = (f32(i) - low) / max(f32(0.001), high - low)
            ramp_mix = (f32(1.0) - min(f32(1.0), max(f32(0.0), y))) * ext_factor
            angle = angle * (f32(1.0) - ramp_mix) + extrap * ramp_mix
        # cosf / sinf: the correctly rounded float32 of the double result
        cos[:, i] = np.cos(angle.astype(np.float64)).astype(np.float32) * mscale
        sin[:, i] = np.sin(angle.astype(np.float64)).astype(np.float32) * mscale
        theta = theta * theta_scale
    return cos, sin


def yarn_attn_factor(freq_scale: float, log_mul: float, rope_attn_factor: float) -> float:
    """The attention factor llama.cpp's context derives for YaRN; the kernel's own
    1 + 0.1 ln(factor) magnitude term is cancelled here, as llama.cpp does."""
    factor = 1.0 / freq_scale

    def mscale(scale: float, m: float) -> float:
        return 1.0 if scale <= 1.0 else 0.1 * m * math.log(scale) + 1.0

    if log_mul != 0.0:
        attn = mscale(factor, 1.0) / mscale(factor, log_mul)
    else:
        attn = mscale(factor, 1.0)
    attn *= 1.0 / (1.0 + 0.1 * math.log(factor)) if factor > 0 else 1.0
    return attn * rope_attn_factor
