"""A MoE token's experts in one call (`matmul.expert_matvecs`): each expert's row the bits its own
`matvecs` gives, whatever the number of experts and threads; one call where the experts are
repacked (Q4_K in the kernel's order, panels), one `matvecs` each otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from llmcli.engine import matmul
from llmcli.engine.matmul import QuantizedMatrix, expert_matvecs, matvecs, set_threads
from llmcli.engine.panels import LAYER_PANEL_ORDER, WIDE_DECODE, pack_kernel_order, pack_panels, packs_layer_panels
from llmcli.errors import BadInputError
from llmcli.gguf.constants import GGMLType

from test_kernels import random_rows

N_ROWS, N_COLS = 37, 512  # a partial last panel (16 rows) and row tile


def _expert(type_name: str, rng) -> QuantizedMatrix:
    """A matrix of type_name repacked as a layer matrix (an expert) of that type is at load
    (models/transformer.py `_repacked`)."""
    ggml_type = GGMLType[type_name]
    W = QuantizedMatrix(random_rows(type_name, N_ROWS, N_COLS, rng), ggml_type, N_COLS)
    W.wide_decode = packs_layer_panels(ggml_type) and ggml_type in WIDE_DECODE
    if packs_layer_panels(ggml_type):
        pack_panels(W, None, LAYER_PANEL_ORDER[ggml_type])
    elif ggml_type == GGMLType.Q4_K:
        pack_kernel_order(W)
    return W


# type -> whether its experts run in one call (repacked) or one `matvecs` each. Q8_0 / Q5_0 layer
# matrices sum decoded tokens in float64 and prompt rows in the row order: one call for the first.
ONE_CALL = {"Q4_K": True, "Q8_0": True, "Q5_0": True, "Q4_0": True, "IQ4_NL": True, "Q6_K": False}


@pytest.mark.parametrize("type_name", sorted(ONE_CALL))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("decoding", [True, False])
def test_each_expert_gets_the_bits_of_its_own_matvecs(type_name, threads, decoding, int8_mode, monkeypatch):
    rng = np.random.default_rng(len(type_name) * 7 + threads)
    experts = [_expert(type_name, rng) for _ in range(4)]
    set_threads(threads)
    for k in (1, 2, 4):
        X = rng.standard_normal((k, N_COLS)).astype(np.float32)
        expected = np.concatenate([matvecs(W, X[i:i + 1], decoding=decoding) for i, W in enumerate(experts[:k])])
        if ONE_CALL[type_name] and (decoding or GGMLType[type_name] not in WIDE_DECODE):  # not `matvecs` each
            monkeypatch.setattr(matmul, "matvecs", lambda *a, **kw: pytest.fail("one matvecs per expert"))
        got = expert_matvecs(experts[:k], X, np.empty((k, N_ROWS), np.float32), decoding)
        monkeypatch.undo()
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), k


def test_float_mode_experts_read_their_rows(activation_mode):
    """In "float" mode the repacked kernels do not apply: each expert's float mat-vec."""
    activation_mode("float")
    rng = np.random.default_rng(3)
    experts = [_expert("Q8_0", rng), _expert("Q8_0", rng)]
    X = rng.standard_normal((2, N_COLS)).astype(np.float32)
    expected = np.concatenate([matvecs(W, X[i:i + 1], decoding=True) for i, W in enumerate(experts)])
    assert np.array_equal(expert_matvecs(experts, X, None, True), expected)


def test_rows_and_matrices_must_pair_up(int8_mode):
    rng = np.random.default_rng(4)
    experts = [_expert("Q4_K", rng) for _ in range(2)]
    with pytest.raises(BadInputError, match="one row per matrix"):
        expert_matvecs(experts, np.zeros((3, N_COLS), np.float32), None)
    other = QuantizedMatrix(random_rows("Q4_K", 16, N_COLS, rng), GGMLType.Q4_K, N_COLS)
    with pytest.raises(BadInputError, match="all of one shape"):
        expert_matvecs([experts[0], other], np.zeros((2, N_COLS), np.float32), None)
    with pytest.raises(BadInputError, match="one row per matrix"):
        expert_matvecs([], np.zeros((0, N_COLS), np.float32), None)


def test_a_moe_token_through_one_call_per_projection_gives_the_expert_loops_logits(tmp_path, int8_mode):
    """The tiny Qwen2-MoE (4 experts, 2 a token, a shared expert) as Q8_0: its experts in panels
    with float64 decode sums. Decoded tokens through `_token_experts` (one call per projection)
    give the logits of the expert-by-expert loop (`_experts_by_rows`, which an observer such as
    imatrix's forces), bit for bit, at 1 and 2 threads."""
    from pathlib import Path

    from llmcli.convert.pipeline import convert
    from llmcli.models import load_model

    path = tmp_path / "qwen2moe-q8_0.gguf"
    convert(Path(__file__).parent / "data" / "hf" / "qwen2moe", path, outtype="q8_0", pre="qwen2")
    for threads in (1, 2):
        model = load_model(path, threads=threads)
        assert model.blocks[0].ffn_gate_exps[0].matrix.panels is not None
        one_call = model._token_experts
        calls = []
        model._token_experts = lambda *a: calls.append(1) or one_call(*a)
        runs = []
        for observer in (None, lambda w, x: None):
            model.observer = observer
            seq = model.new_sequence()
            logits = [model.forward(seq, [5, 6, 7])]
            for _ in range(6):
                logits.append(model.forward(seq, [int(np.argmax(logits[-1]))]))
            runs.append(np.stack(logits))
        # the one-call path ran: each decoded token's 2 layers, and the prompt's last layer (only
        # its last row goes on there)
        assert len(calls) == 6 * 2 + 1
        assert np.array_equal(runs[0].view(np.uint32), runs[1].view(np.uint32))
