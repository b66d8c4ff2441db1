"""Temporary stand-in for engine/matmul.py (dequantize per call, numpy matmul) until it lands."""

import numpy as np


class QuantizedMatrix:
    def __init__(self, raw, ggml_type, n_cols):
        from .linear import float_rows

        self.w = np.ascontiguousarray(float_rows(raw, ggml_type))


def matvec(W, x, out):
    np.dot(W.w, x, out=out)


def matmul(W, X, out):
    np.dot(X, W.w.T, out=out)


def set_threads(n):
    pass
