"""IQ3_XXS and IQ3_S: the codecs' registration and the quantizer's neighbour lists as ggml's
iq3xs_init_impl defines them. Byte identity with llama-quantize (--pure with the imatrix; IQ3_S
also without, IQ3_XXS's token_embd without weights; the IQ3_XS, IQ3_S, IQ3_M mixes), ggml's
dequantize and ggml_quantize_chunk are checked in test_iquants_quantize.py with the other i-quants."""

from __future__ import annotations

import numpy as np
import pytest

from llmcli.gguf.constants import GGMLType
from llmcli.quants import get_codec
from llmcli.quants.iq_search import search_tables

TYPES = ["IQ3_XXS", "IQ3_S"]


@pytest.mark.parametrize("type_name", TYPES)
def test_codec_takes_importance_weights(type_name):
    codec = get_codec(GGMLType[type_name])
    assert codec.uses_weights and codec.quantize is not None and codec.decoder is not None


@pytest.mark.parametrize("grid_name, nwant", [("iq3xxs_grid", 2), ("iq3s_grid", 3)])
def test_neighbour_lists_are_ggmls(grid_name, nwant):
    """Off-grid point u lists every grid entry within its nwant smallest distinct squared distances,
    in (distance, index) order - what ggml's qsort of (distance, index) pairs gives."""
    qgrid, kmap, neighbours = search_tables(grid_name, nwant, 4096)
    assert (kmap >= 0).sum() == qgrid.shape[0]
    assert np.array_equal(kmap[kmap >= 0], np.sort(kmap[kmap >= 0]))   # ggml's grids are sorted
    g = qgrid.astype(np.int64)
    for u in np.flatnonzero(kmap < 0):
        pos = 2 * ((u >> (3 * np.arange(4))) & 7) + 1
        d2 = ((g - pos) ** 2).sum(axis=1)
        order = np.lexsort((np.arange(len(d2)), d2))
        want = order[d2[order] <= np.unique(d2)[:nwant][-1]]
        at = -kmap[u] - 1
        assert np.array_equal(neighbours[at + 1:at + 1 + neighbours[at]], want), u
