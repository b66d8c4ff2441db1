"""--no-mmap and --mlock (llama.cpp's load options): the same model, read or locked differently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
