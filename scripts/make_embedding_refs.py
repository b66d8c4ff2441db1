#!/usr/bin/env python3
"""Make the embedding references: llama.cpp's `llama-embedding` on small GGUFs (not run by the tests).

    python scripts/make_embedding_refs.py [--llama-embedding /work/scratch/llama/bin/llama-embedding]

1. Builds tests/data/embedding/qwen3-embed-f16.gguf: the tiny Qwen3 checkpoint (tests/data/hf/qwen3)
   converted with `llmcli convert --outtype f16 --pre qwen2` (as tests/data/gguf_ref/qwen3-f16), then
   written again with the two keys a Qwen3 embedding GGUF carries: `qwen3.pooling_type = 3` (LAST)
   and `tokenizer.ggml.add_eos_token = true` (the prompt ends with EOS, whose state is pooled).
2. Runs llama-embedding (unnormalised: --embd-normalize -1; all prompts in one call, one sequence
   each; --verbose-prompt for the token ids it used) on
   - tests/data/gguf_ref/llama-f16.gguf with --pooling mean (the file declares no pooling type),
   - qwen3-embed-f16.gguf with no --pooling option: llama.cpp must take LAST from the file,
   - the demo model (Gemma 3 270M Q4_K_M) with --pooling mean,
   with llama-embedding's default f16 KV cache (an f32 one, -ctk f32 -ctv f32, gives the same
   printed values on these files: the differences from llmcli come from ggml's matmuls, which
   round activations to f16 for f16 weights and to 8 bits for k-quants).
3. Writes tests/data/embedding/<name>.json: prompts, llama.cpp's token ids, pooling, embeddings.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmcli.convert import convert  # noqa: E402
from llmcli.demo import demo_model_path  # noqa: E402
from llmcli.gguf import GGUFReader, GGUFWriter, MetadataValue, ValueType  # noqa: E402

OUT = ROOT / "tests" / "data" / "embedding"
PROMPTS = [
    "Once upon a time",
    "The capital of France is Paris.",
    "hello",
    "A longer sentence, with punctuation; numbers 12345 and a second clause that goes on for a while "
    "so that the prompt spans more tokens than a small batch holds.",
]
ID_LINE = re.compile(r"^\s*(\d+) -> '")


def qwen3_embedding_gguf(path: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "qwen3-f16.gguf"
        convert(ROOT / "tests" / "data" / "hf" / "qwen3", plain, outtype="f16", pre="qwen2")  # as its gguf_ref
        reader = GGUFReader(plain)
        w = GGUFWriter(path, force=True)
        add_eos = MetadataValue(ValueType.BOOL, True)
        for key, mv in reader.metadata.items():
            w.add(key, add_eos if key == "tokenizer.ggml.add_eos_token" else mv)
            if key == "qwen3.rope.freq_base":  # beside the other qwen3.* keys
                w.add("qwen3.pooling_type", MetadataValue(ValueType.UINT32, 3))
        if "tokenizer.ggml.add_eos_token" not in reader.metadata:
            w.add("tokenizer.ggml.add_eos_token", add_eos)
        w.add_tensor_infos_from(reader.tensors)
        with w.open():
            for t, data in reader.iter_tensors():
                w.write_tensor_data(t.name, data)
        reader.close()
    with GGUFReader(path) as check:
        assert check.get("qwen3.pooling_type") == 3 and check.get("tokenizer.ggml.add_eos_token") is True
    return path


def llama_embedding(binary: str, model: Path, pooling: str | None) -> tuple[list, list]:
    cmd = [binary, "-m", str(model), "-t", "1", "-c", "512", "--embd-normalize", "-1",
           "--embd-output-format", "json", "--verbose-prompt", "-p", "\n".join(PROMPTS)]
    if pooling:
        cmd += ["--pooling", pooling]
    # llama.cpp's log thread sometimes loses the end of stdout at exit: run again until it is whole
    for _ in range(10):
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        if pooling is None and "pooling_type" in run.stderr and "was specified" in run.stderr:
            raise SystemExit(f"llama-embedding overrode the file's pooling type:\n{run.stderr}")
        if run.stdout.rstrip().endswith("}"):
            try:
                return _parse(run.stdout)
            except ValueError:
                pass
    raise SystemExit(f"no whole output from {' '.join(cmd)}")


def _parse(out: str) -> tuple[list, list]:
    ids, current = [], []  # one block of "  id -> 'piece'" lines per prompt
    for line in out[:out.index("{")].splitlines() + [""]:
        found = ID_LINE.match(line)
        if found:
            current.append(int(found.group(1)))
        elif current:
            ids.append(current)
            current = []
    data = json.loads(out[out.index("{"):out.rindex("}") + 1])["data"]
    return ids, [d["embedding"] for d in sorted(data, key=lambda d: d["index"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-embedding", default="/work/scratch/llama/bin/llama-embedding")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    qwen3 = qwen3_embedding_gguf(OUT / "qwen3-embed-f16.gguf")
    cases = [("llama-f16.mean", ROOT / "tests" / "data" / "gguf_ref" / "llama-f16.gguf", "mean"),
             ("qwen3-embed-f16.last", qwen3, None),
             ("demo.mean", demo_model_path(), "mean")]
    for name, model, pooling in cases:
        ids, embeddings = llama_embedding(args.llama_embedding, model, pooling)
        assert len(ids) == len(embeddings) == len(PROMPTS), (ids, len(embeddings))
        record = {"model": model.name, "pooling": pooling or "last (the file's qwen3.pooling_type)",
                  "tool": "llama-embedding, llama.cpp 0c1e570, -t 1 -c 512 --embd-normalize -1",
                  "prompts": PROMPTS, "ids": ids, "embeddings": embeddings}
        (OUT / f"{name}.json").write_text(json.dumps(record) + "\n")
        print(f"wrote {OUT / name}.json: {len(embeddings)} embeddings of {len(embeddings[0])}")


if __name__ == "__main__":
    main()
