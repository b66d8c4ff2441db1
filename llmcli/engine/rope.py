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
    """(cos, sin), each float32 (n_ctx, n_rot / 2)."""
    half = cfg.n_rot // 2
    i = np.arange(half, dtype=np.float64)
    inv_freq = cfg.freq_base ** (-2.0 * i / cfg.n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)[:half]
    theta_extrap = np.arange(n_ctx, dtype=np.float64)[:, None] * inv_freq[None, :]
    theta = cfg.freq_scale * theta_extrap
    mscale = cfg.attn_factor
    if cfg.ext_factor != 0.0:
        low, high = yarn_corr_dims(cfg)
        y = (i - low) / max(0.001, high - low)  # ggml's ramp over pair index i0 / 2 = i
        ramp_mix = (1.0 - np.clip(y, 0.0, 1.0)) * cfg.ext_factor
        theta = theta * (1.0 - ramp_mix) + theta_extrap * ramp_mix
        mscale *= 1.0 + 0.1 * math.log(1.0 / cfg.freq_scale)
    cos = (np.cos(theta) * mscale).astype(np.float32)
    sin = (np.sin(theta) * mscale).astype(np.float32)
    return np.ascontiguousarray(cos), np.ascontiguousarray(sin)


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
