"""IQ1_S and IQ1_M: IQ1_S's need of importance weights and the neighbour lists of the IQ1 grid as
ggml's iq2xs_init_impl defines them. Byte identity with `llama-quantize --imatrix --pure` (IQ1_S
with --token-embedding-type Q8_0; IQ1_M's token_embd quantized without weights), ggml's dequantize
and ggml_quantize_chunk are checked in test_iquants_quantize.py with the other i-quants.

The kq model's f16 weights repeat values within sub-blocks (5-11 thousand of them), so those runs
also pin the order ggml's qsort leaves equal values in (glibc's stable merge sort: column order);
sorting ties the other way round changes 1 IQ1_S block and 115 IQ1_M blocks of the model."""

from __future__ import annotations

import numpy as np
import pytest

from llmcli.errors import UnsupportedError
from llmcli.gguf.constants import GGMLType
from llmcli.quants import get_codec, quantize
from llmcli.quants.iq_search import search_tables

TYPES = ["IQ1_S", "IQ1_M"]


def test_iq1_s_needs_importance_weights():
    assert get_codec(GGMLType.IQ1_S).uses_weights and get_codec(GGMLType.IQ1_M).uses_weights
    rows = np.ones((1, 256), np.float32)
    with pytest.raises(UnsupportedError, match="IQ1_S needs importance weights"):
        quantize(rows, GGMLType.IQ1_S)


def test_neighbour_lists_are_ggmls():
    """A sample of the IQ1 grid's off-grid points: every entry within the 3 smallest distinct
    squared distances, in (distance, index) order."""
    qgrid, kmap, neighbours = search_tables("iq1s_grid", 3, 43692)
    assert (kmap >= 0).sum() == 2048
    g = qgrid.astype(np.int64)
    off_grid = np.flatnonzero(kmap < 0)
    for u in off_grid[np.linspace(0, len(off_grid) - 1, 300).astype(int)]:
        pos = 2 * ((u >> (2 * np.arange(8))) & 3) + 1
        d2 = ((g - pos) ** 2).sum(axis=1)
        order = np.lexsort((np.arange(len(d2)), d2))
        want = order[d2[order] <= np.unique(d2)[:3][-1]]
        at = -kmap[u] - 1
        assert np.array_equal(neighbours[at + 1:at + 1 + neighbours[at]], want), u
