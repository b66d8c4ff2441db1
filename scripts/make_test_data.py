#!/usr/bin/env python3
"""Copy what the tests need from ../shared/reference into tests/data (run by hand, not by the tests).

The reference pack was made with llama.cpp (commit 0c1e570) and transformers; see its README.
We keep the small inputs (safetensors checkpoints, tokenizer files, logits) and replace llama.cpp's
GGUFs by JSON records of them - file sha256, metadata, per-tensor type/shape/sha256 - so a test can
say which tensor or key differs without shipping the GGUFs.

    python scripts/make_test_data.py [--reference ../shared/reference]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path


from llmcli.gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
TINY = ["llama", "llama_bf16", "mistral", "mixtral", "qwen2", "gemma3", "phi3"]
SMALL_GGUFS = ["qwen2-f16.gguf", "llama-f16.gguf"]  # kept whole for reader/writer round trips


def gguf_record(path: Path) -> dict:
    """Everything about a GGUF a test compares against, as JSON."""
    with GGUFReader(path) as r:
        meta = {}
        for key, mv in r.metadata.items():
            item = mv.item_type.name if mv.item_type is not None else None
            meta[key] = {"type": mv.type.name, "item_type": item, "value": mv.to_python()}
        tensors = {
            t.name: {"type": t.type.name, "shape": list(t.shape), "n_bytes": t.n_bytes,
                     "sha256": hashlib.sha256(r.tensor_bytes(t).tobytes()).hexdigest()}
            for t in r.tensors
        }
        order = [t.name for t in r.tensors]
    data = path.read_bytes()
    return {"file": path.name, "file_size": len(data), "file_sha256": hashlib.sha256(data).hexdigest(),
            "metadata": meta, "tensor_order": order, "tensors": tensors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference")
    ref = ap.parse_args().reference

    for name in TINY:
        dst = DATA / "hf" / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(ref / "hf" / name, dst)

    out = DATA / "gguf_ref"
    out.mkdir(parents=True, exist_ok=True)
    for name in TINY:
        for kind in ("f32", "f16"):
            rec = gguf_record(ref / "gguf" / f"{name}-{kind}.gguf")
            (out / f"{name}-{kind}.json").write_text(json.dumps(rec, ensure_ascii=False, indent=1))
            shutil.copy(ref / "gguf" / f"{name}-{kind}.llamacpp_logits.npy", out)
        shutil.copy(ref / "gguf" / f"{name}.llamacpp.json", out)
    for fname in SMALL_GGUFS:
        shutil.copy(ref / "gguf" / fname, out / fname)

    # K-quant model: the f16 GGUF llama.cpp wrote, llama-quantize's per-tensor records for every
    # type, and llama.cpp's logits. The quantized GGUFs themselves are not kept: the per-tensor
    # sha256 in kq/types/*.json pin every byte of them.
    kq = DATA / "kq"
    if kq.exists():
        shutil.rmtree(kq)
    kq.mkdir(parents=True)
    for fname in ("kq-f16.gguf", "index.json", "determinism.json"):
        shutil.copy(ref / "kq" / fname, kq / fname)
    shutil.copytree(ref / "kq" / "types", kq / "types")
    shutil.copytree(ref / "kq" / "llamacpp", kq / "llamacpp")
    shutil.copytree(ref / "kq" / "hf", kq / "hf", ignore=shutil.ignore_patterns("model.safetensors"))

    demo = DATA / "demo"
    demo.mkdir(exist_ok=True)
    shutil.copy(ref / "gemma3-270m" / "llamacpp.json", demo / "llamacpp.json")
    print(f"wrote {DATA}")


if __name__ == "__main__":
    main()
