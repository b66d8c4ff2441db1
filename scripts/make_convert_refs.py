#!/usr/bin/env python3
"""Make reference records for `llmcli convert --outtype q8_0|bf16` with llama.cpp's own converter.

Runs llama.cpp's `convert_hf_to_gguf.py` (the vendored copy at the reference commit, needs torch +
transformers: run it with the reference venv) on the tiny checkpoints in tests/data/hf and stores only
a JSON record of each output (file sha256, metadata, per-tensor type/shape/sha256) under
tests/data/convert_ref/. The byte-level BPE checkpoints have pre-tokenizer hashes llama.cpp does not
know; as in the reference pack, their `tokenizer.ggml.pre` is forced (llama_bf16 -> llama-bpe,
qwen2 -> qwen2) by replacing the converter's hash lookup for that run.

    /work/refvenv/bin/python scripts/make_convert_refs.py \
        --llama-cpp /work/llsrc/llama_cpp_python-0.3.36/vendor/llama.cpp
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
FORCED_PRE = {"llama_bf16": "llama-bpe", "qwen2": "qwen2"}
JOBS = [("llama", "q8_0"), ("mixtral", "q8_0"), ("gemma3", "q8_0"), ("phi3", "q8_0"),
        ("qwen2", "q8_0"), ("llama_bf16", "q8_0"), ("llama_bf16", "bf16"), ("llama", "bf16"),
        ("llama_bf16", "auto"), ("llama", "auto")]

# Runs inside the llama.cpp directory: optionally pin the pre-tokenizer name, then the converter's main().
DRIVER = """
import sys, runpy
sys.path.insert(0, 'gguf-py'); sys.path.insert(0, '.')
forced = sys.argv.pop(1)
if forced != '-':
    from conversion.base import TextModel
    TextModel.get_vocab_base_pre = lambda self, tokenizer: forced
sys.argv[0] = 'convert_hf_to_gguf.py'
runpy.run_path('convert_hf_to_gguf.py', run_name='__main__')
"""


def gguf_record(path: Path) -> dict:
    import numpy as np  # noqa: F401  (gguf needs it)
    from gguf import GGUFReader

    r = GGUFReader(path)
    meta = {}
    for field in r.fields.values():
        if field.name.startswith("GGUF."):
            continue
        meta[field.name] = {"type": field.types[0].name,
                            "item_type": field.types[-1].name if len(field.types) > 1 else None,
                            "value": field.contents()}
    tensors = {t.name: {"type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                        "n_bytes": int(t.n_bytes), "sha256": hashlib.sha256(t.data.tobytes()).hexdigest()}
               for t in r.tensors}
    data = path.read_bytes()
    return {"file": path.name, "file_size": len(data), "file_sha256": hashlib.sha256(data).hexdigest(),
            "metadata": meta, "tensor_order": [t.name for t in r.tensors], "tensors": tensors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp", type=Path, required=True)
    args = ap.parse_args()
    out_dir = DATA / "convert_ref"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, outtype in JOBS:
            out = Path(tmp) / f"{name}-{outtype}.gguf"
            cmd = [sys.executable, "-c", DRIVER, FORCED_PRE.get(name, "-"), str(DATA / "hf" / name),
                   "--outtype", outtype, "--outfile", str(out)]
            subprocess.run(cmd, cwd=args.llama_cpp, check=True, capture_output=True)
            rec = gguf_record(out)
            rec["command"] = f"convert_hf_to_gguf.py tests/data/hf/{name} --outtype {outtype}" + (
                f" (tokenizer.ggml.pre forced to {FORCED_PRE[name]})" if name in FORCED_PRE else "")
            (out_dir / f"{name}-{outtype}.json").write_text(json.dumps(rec, indent=1, ensure_ascii=False))
            print(name, outtype, rec["file_sha256"], rec["file_size"])


if __name__ == "__main__":
    main()
