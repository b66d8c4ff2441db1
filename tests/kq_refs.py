"""Checks shared by the tests that run the engine on the K-quant test model (tests/data/kq) quantized to
some type and compare it with llama.cpp's recorded runs of the same file: the K-quants
(tests/data/kq/llamacpp, test_models_kq.py) and the i-quants (tests/data/iquants/logits,
test_models_iquants.py, whose files also come from quantize.json, test_iquants_quantize.py).

A record (`<TAG>.json`) holds `prompt_ids` and `dequant_f32.native_vs_dequant_f32`: llama.cpp's own
max/mean |diff| and argmax agreement between its native run (8-bit activations, f16 KV cache) and its
run on the same weights dequantized to F32 with an F32 KV cache (float32 math on exactly those weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from llmcli.gguf import GGUFReader
from llmcli.gguf.constants import GGMLType
from llmcli.models import load_model
from llmcli.quantize import quantize_file
from llmcli.quants.mixes import QuantizeOptions

DATA = Path(__file__).parent / "data"
KQ_DIR = DATA / "kq"
KQ = KQ_DIR / "kq-f16.gguf"
IMATRIX_DIR = DATA / "imatrix"
# llama.cpp's dequant-f32 run vs our float32 path: float summation order only (README of the references: 1e-3-1e-2)
DEQUANT_F32_MAX = 1e-2
DEQUANT_F32_ARGMAX = 0.97


def prompt_ids() -> list[int]:
    """The reference prompt's ids, as every kq record has them."""
    return json.loads((KQ_DIR / "llamacpp" / "f16.json").read_text())["prompt_ids"]


def tensor_hashes(path: Path) -> list[list[str]]:
    """[name, type, sha256 of the data] per tensor in file order (quantize.json's `tensors`)."""
    with GGUFReader(path) as r:
        return [[t.name, t.type.name, hashlib.sha256(r.tensor_bytes(t).tobytes()).hexdigest()] for t in r.tensors]


def quantize_as_run(run: dict, out: Path) -> None:
    """Quantize kq-f16.gguf as a quantize.json run of llama-quantize did (its type argument, --pure,
    --token-embedding-type, --imatrix kq.imatrix.gguf). The imatrix's name as given goes into
    quantize.imatrix.file: call from tests/data/imatrix (monkeypatch.chdir(IMATRIX_DIR))."""
    options = run["options"]
    embd = options[options.index("--token-embedding-type") + 1] if "--token-embedding-type" in options else None
    options = QuantizeOptions(pure=run["pure"], token_embedding_type=GGMLType[embd] if embd else None)
    quantize_file(KQ, out, run["type"], options, measure=False, imatrix="kq.imatrix.gguf" if run["imatrix"] else None)


def float_logits(path: Path) -> np.ndarray:
    """Our float32 path with an F32 KV cache: the arithmetic of llama.cpp's dequant_f32 run."""
    return load_model(path, threads=1, cache_type_k="f32", cache_type_v="f32",
                      prompt_activations="float").logits(prompt_ids())


def default_logits(path: Path) -> np.ndarray:
    """The default settings (8-bit prompt activations where the weight type has integer kernels, f16
    KV cache), as llama.cpp's native run."""
    return load_model(path, threads=1).logits(prompt_ids())


def check_dequant_f32(logits: np.ndarray, ref: np.ndarray, tag: str) -> None:
    diff = np.abs(logits - ref).max()
    assert diff < DEQUANT_F32_MAX, f"{tag}: max |logit - llama.cpp dequant-f32| = {diff:.4g}"
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= DEQUANT_F32_ARGMAX


def own_distance(record: dict) -> dict:
    """llama.cpp's own native-vs-dequant-f32 distance in a record."""
    return record["dequant_f32"]["native_vs_dequant_f32"]


def check_within(logits: np.ndarray, native: np.ndarray, tag: str, bound_max: float, bound_mean: float,
                 min_argmax: float) -> None:
    """max and mean |logits - native| and argmax agreement against the given bounds."""
    diff = np.abs(logits - native)
    assert diff.max() <= bound_max, f"{tag}: max |ours - llama.cpp native| {diff.max():.4g} > {bound_max:.4g}"
    assert diff.mean() <= bound_mean, f"{tag}: mean |ours - llama.cpp native| {diff.mean():.4g} > {bound_mean:.4g}"
    agree = (logits.argmax(1) == native.argmax(1)).mean()
    assert agree >= min_argmax, f"{tag}: argmax agrees at {agree:.3f} of positions < {min_argmax:.3f}"
