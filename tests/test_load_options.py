"""--no-mmap and --mlock (llama.cpp's load options): the same model, read or locked differently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmcli.gguf.constants import GGMLType
from llmcli.gguf.reader import GGUFReader
from llmcli.models import load_model

DATA = Path(__file__).parent / "data"
MODEL = DATA / "gguf_ref" / "qwen2-f16.gguf"
PROMPT = [51, 428, 220, 433, 355, 74, 405, 308]


def _locked_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError("no VmLck in /proc/self/status")


def test_read_into_memory_gives_the_mapped_bytes():
    with GGUFReader(MODEL) as mapped, GGUFReader(MODEL, use_mmap=False) as read:
        assert read.metadata.keys() == mapped.metadata.keys()
        assert [t.name for t in read.tensors] == [t.name for t in mapped.tensors]
        for t in mapped.tensors:
            assert np.array_equal(read.tensor_bytes(t.name), mapped.tensor_bytes(t.name))
        assert read.tensor_bytes(read.tensors[0]).flags.writeable  # process memory, not the map


def test_mlock_locks_the_file_bytes():
    before = _locked_kib()
    reader = GGUFReader(MODEL, mlock=True)
    try:
        assert _locked_kib() - before >= MODEL.stat().st_size // 1024 - 4
    finally:
        reader.close()


def test_models_loaded_each_way_give_the_same_logits():
    logits = []
    for use_mmap, mlock in ((True, False), (False, False), (False, True), (True, True)):
        model = load_model(MODEL, threads=1, ctx_size=64, use_mmap=use_mmap, mlock=mlock)
        logits.append(model.logits(PROMPT))
    assert all(np.array_equal(logits[0], other) for other in logits[1:])


def test_run_accepts_no_mmap_and_mlock(cli):
    plain = cli("run", "-m", MODEL, "-p", "hello", "-n", "6", "--temp", "0", "--json")
    loaded = cli("run", "-m", MODEL, "-p", "hello", "-n", "6", "--temp", "0", "--no-mmap", "--mlock", "--json")
    assert plain.exit_code == loaded.exit_code == 0, loaded.stderr

    assert json.loads(plain.stdout)["tokens"] == json.loads(loaded.stdout)["tokens"]


def test_layer_matrices_are_repacked_only_where_the_map_gives_their_pages_back(cli, tmp_path):
    """Q4_0 (and IQ4_NL) layer matrices run as VNNI panels (engine/panels.py) when their mapped
    pages can be released; --no-mmap's copy and --mlock's locked pages cannot be, so those keep the
    rows (one copy of the weights either way), with logits equal up to summation order."""
    quantized = tmp_path / "qwen2-q4_0.gguf"
    res = cli("quantize", MODEL, quantized, "--type", "Q4_0", "--threads", "1")
    assert res.exit_code == 0, res.stderr
    logits = []
    for use_mmap, mlock, packed in ((True, False, True), (False, False, False), (True, True, False)):
        model = load_model(quantized, threads=1, ctx_size=64, use_mmap=use_mmap, mlock=mlock)
        q4_0 = [m for blk in model.blocks for m in vars(blk).values()
                if getattr(m, "type", None) == GGMLType.Q4_0]
        assert q4_0 and all((m.matrix.panels is not None) == packed for m in q4_0), (use_mmap, mlock)
        logits.append(model.logits(PROMPT))
    assert np.allclose(logits[1], logits[0], rtol=0, atol=1e-3 * np.abs(logits[0]).max())
    assert np.array_equal(logits[1], logits[2])


def test_mlock_with_an_output_matrix_repacked_out_of_the_map():
    """The demo model's 178 MB Q8_0 output is repacked at load; with --mlock its locked pages are
    not released (madvise refuses them: the load failed with EINVAL), and the logits are the same:
    its Q5_0 / Q8_0 layer matrices, in row-order panels from the map and rows under --mlock, give
    the row mat-vec's bits either way (8 tokens: 8-column mat-vecs)."""
    from llmcli.demo import demo_model_path

    case = json.loads((DATA / "demo" / "llamacpp.json").read_text())["prompts"][0]
    ids = (case["prompt_ids"] + case["greedy_new_ids"])[:8]
    logits = []
    for mlock in (False, True):
        model = load_model(demo_model_path(), threads=1, ctx_size=64, mlock=mlock)
        assert model.output.matrix.panels is not None
        q5_0 = [m for blk in model.blocks for m in vars(blk).values() if getattr(m, "type", None) == GGMLType.Q5_0]
        assert q5_0 and all((m.matrix.panels is not None) != mlock for m in q5_0)
        assert all(m.matrix.panels.row_order for m in q5_0 if m.matrix.panels is not None)
        logits.append(model.logits(ids))
        del model
    assert np.array_equal(logits[0], logits[1])
