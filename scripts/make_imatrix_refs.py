"""Make tests/data/imatrix/: what llama-imatrix and `llama-quantize --imatrix` (llama.cpp 0c1e570) do.

Run by hand (not by the tests), with the reference binaries built from llama-cpp-python 0.3.36's
vendored llama.cpp:

    PYTHONPATH=. python scripts/make_imatrix_refs.py [--bin /work/scratch/llama/build/bin]
                                                     [--reference /work/shared/reference]

Every command runs inside tests/data/imatrix with the text given as `-f genesis-1-3.txt`, so the
`imatrix.datasets` recorded in the files is that relative name. It writes, beside the text:

* `<name>.imatrix.gguf` / `.dat`: llama-imatrix's own files (they are small) -
  `llama` (reference llama-f32, -c 128, 4 chunks), `llama-c103` (-c 103, 5 chunks: 19 sequences fit
  a 2048-token batch, so 5 run together and each 512-token ubatch takes 102 positions of each; the
  last position of every chunk lands in a ubatch of 5 rows, which llama-imatrix ignores, being
  under 16), `mixtral` and `mixtral-f32` (reference mixtral-f16 / -f32, 4 experts: per-expert sums
  and counts; with f16 weights llama.cpp rounds activations to f16, and one token's routing in
  layer 0 is a near-tie that goes the other way in float32), `kq`
  (tests/data/kq, 6 chunks with --process-output, as .gguf and as the legacy .dat), `kq-b`
  (--chunk 6, 3 more chunks), and merges made by `--in-file` without a text (`kq-merged`,
  `kq-merged-dat` from the .dat and a .gguf, and `kq-merged` written as .dat);
* `kq-Q4_K_M.imatrix.gguf` (--quantized-only adds just this to imatrix.json): llama-imatrix on a
  quantized model, kq-Q4_K_M.gguf made by `llama-quantize kq-f16.gguf kq-Q4_K_M.gguf Q4_K_M 2`
  (llmcli quantize writes the same bytes), -c 128, 4 chunks. llama.cpp rounds the activations of
  quantized products to 8 bits, which moves every later layer's sums;
* `<name>.llmcli.imatrix.gguf` / `.dat`: `llmcli imatrix` on the kq model with the same settings,
  so that llama.cpp can be shown to read what llmcli writes;
* `imatrix.json`: per run the command, llama-imatrix's perplexity lines, the file's sha256; the
  llama.cpp runs that read llmcli's files (a merge by llama-imatrix, quantizations by
  llama-quantize) with their results;
* `quantize.json`: `llama-quantize --imatrix kq.imatrix.gguf kq-f16.gguf OUT TYPE 2` for every
  type llmcli supports (and Q2_K_S, which needs an imatrix), plus runs with the legacy file,
  --include-weights / --exclude-weights, and llmcli's own imatrix file: the output's sha256 and
  size, the quantize.imatrix.* metadata, and per tensor (in file order) type and data sha256;
* `demo.imatrix.gguf` and `imatrix.json`'s `demo_model` (--demo-only makes just these): llama-imatrix
  on the demo model, -c 512, with its defaults (the file) and with -ub 128 (per weight matrix, its
  sums' relative distance from the defaults' - llama.cpp's own float-rounding spread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "imatrix"
TEXT = "genesis-1-3.txt"
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
         "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cmd: list[str], cwd: Path = OUT) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def ppl_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines()
            if line.startswith("[1]") or line.startswith("Final estimate")]


def imatrix_runs(bin_dir: Path, models: dict[str, Path]) -> dict:
    exe = str(bin_dir / "llama-imatrix")
    runs = {
        "llama": ["-m", models["llama"], "-c", "128", "--chunks", "4"],
        "llama-c103": ["-m", models["llama"], "-c", "103", "--chunks", "5"],
        "mixtral": ["-m", models["mixtral"], "-c", "128", "--chunks", "4"],
        "mixtral-f32": ["-m", models["mixtral_f32"], "-c", "128", "--chunks", "4"],
        "kq": ["-m", models["kq"], "-c", "128", "--chunks", "6", "--process-output"],
        "kq-b": ["-m", models["kq"], "-c", "128", "--chunk", "6", "--chunks", "3", "--process-output"],
    }
    record = {}
    for name, args in runs.items():
        for fmt in (("gguf", "dat") if name == "kq" else ("gguf",)):
            out_name = f"{name}.imatrix.{fmt}"
            cmd = [exe, *map(str, args), "-f", TEXT, "-o", out_name, "--output-format", fmt, "-t", "2"]
            res = run(cmd)
            if res.returncode:
                raise SystemExit(f"{cmd} failed:\n{res.stderr[-3000:]}")
            shown = [os.path.basename(c) if c.endswith(".gguf") and "/" in c else c for c in cmd]
            shown[0] = "llama-imatrix"
            record[out_name] = {"command": " ".join(shown), "ppl": ppl_lines(res.stdout + res.stderr),
                                "sha256": sha256_file(OUT / out_name)}
    merges = {
        "kq-merged.imatrix.gguf": ["kq.imatrix.gguf", "kq-b.imatrix.gguf"],
        "kq-merged-dat.imatrix.gguf": ["kq.imatrix.dat", "kq-b.imatrix.gguf"],
        "kq-merged.imatrix.dat": ["kq.imatrix.gguf", "kq-b.imatrix.gguf"],
    }
    for out_name, inputs in merges.items():
        fmt = out_name.rsplit(".", 1)[1]
        # llama-imatrix wants -m even when it only merges (it does not load the model then)
        cmd = [exe, "-m", str(models["kq"]), "-c", "128", *sum((["--in-file", i] for i in inputs), []),
               "-o", out_name, "--output-format", fmt]
        res = run(cmd)
        if res.returncode:
            raise SystemExit(f"{cmd} failed:\n{res.stderr[-3000:]}")
        record[out_name] = {"command": " ".join(["llama-imatrix", "-m", "kq-f16.gguf"] + cmd[3:]),
                            "sha256": sha256_file(OUT / out_name)}
    return record


def quantized_model_run(bin_dir: Path, models: dict[str, Path]) -> tuple[dict, dict]:
    """llama-imatrix on kq quantized to Q4_K_M: (the model's record, the run's record)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "kq-Q4_K_M.gguf"
        res = run([str(bin_dir / "llama-quantize"), str(models["kq"]), str(model), "Q4_K_M", "2"])
        if res.returncode:
            raise SystemExit(f"llama-quantize failed:\n{res.stderr[-3000:]}")
        out_name = "kq-Q4_K_M.imatrix.gguf"
        cmd = [str(bin_dir / "llama-imatrix"), "-m", str(model), "-c", "128", "--chunks", "4", "-f", TEXT,
               "-o", out_name, "-t", "2"]
        res = run(cmd)
        if res.returncode:
            raise SystemExit(f"{cmd} failed:\n{res.stderr[-3000:]}")
        model_record = {"file": model.name, "sha256": sha256_file(model),
                        "command": "llama-quantize kq-f16.gguf kq-Q4_K_M.gguf Q4_K_M 2"}
        shown = ["llama-imatrix", "-m", model.name, *cmd[3:]]
        return model_record, {out_name: {"command": " ".join(shown), "ppl": ppl_lines(res.stdout + res.stderr),
                                         "sha256": sha256_file(OUT / out_name)}}


def demo_model_runs(bin_dir: Path) -> dict:
    """llama-imatrix on the demo model (Gemma 3 270M Q4_K_M), -c 512 over the whole text, with its
    defaults (kept: `demo.imatrix.gguf`) and with -ub 128 (the same arithmetic summed in another
    order; not kept): per weight matrix how far the second run's sums are from the first's
    (|a - b| / |b| over the column vector), i.e. how far float rounding alone moves a trained
    model's statistics."""
    from llmcli.demo import demo_model_path
    from llmcli.imatrix import read_imatrix

    model = demo_model_path()
    record = {"model": model.name, "model_sha256": sha256_file(model), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for label, extra, out in (("default", [], OUT / "demo.imatrix.gguf"),
                                  ("ub128", ["-ub", "128"], Path(tmp) / "demo-ub128.imatrix.gguf")):
            cmd = [str(bin_dir / "llama-imatrix"), "-m", str(model), "-f", TEXT, "-c", "512", *extra, "-t", "2",
                   "-o", out.name if out.parent == OUT else str(out)]
            res = run(cmd)
            if res.returncode:
                raise SystemExit(f"{cmd} failed:\n{res.stderr[-3000:]}")
            files[label] = read_imatrix(out).entries
            record["runs"][label] = {"command": " ".join(["llama-imatrix", "-m", model.name, *cmd[3:-2]]),
                                     "ppl": ppl_lines(res.stdout + res.stderr)}
        record["runs"]["default"]["sha256"] = sha256_file(OUT / "demo.imatrix.gguf")
        base = files["default"]
        record["runs"]["ub128"]["relative_error_vs_default"] = {
            name: float(np.linalg.norm(e.sums.astype(np.float64) - base[name].sums)
                        / np.linalg.norm(base[name].sums.astype(np.float64)))
            for name, e in files["ub128"].items()}
    return record


def llmcli_imatrix(models: dict[str, Path]) -> dict:
    """llmcli's own files for the kq model, for llama.cpp to read."""
    record = {}
    for fmt in ("gguf", "dat"):
        out_name = f"kq.llmcli.imatrix.{fmt}"
        (OUT / out_name).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "llmcli", "imatrix", "-m", str(models["kq"]), "-f", TEXT, "-o", out_name,
               "-c", "128", "--chunks", "6", "--process-output", "--output-format", fmt]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if env.get("NUMBA_CACHE_DIR"):  # the command runs elsewhere: keep a relative cache where it was
            env["NUMBA_CACHE_DIR"] = os.path.abspath(env["NUMBA_CACHE_DIR"])
        print("$", " ".join(cmd), file=sys.stderr)
        res = subprocess.run(cmd, cwd=OUT, capture_output=True, text=True, env=env)
        if res.returncode:
            raise SystemExit(f"{cmd} failed:\n{res.stderr[-3000:]}")
        record[out_name] = {"command": "llmcli imatrix -m kq-f16.gguf " + " ".join(cmd[6:]),
                            "sha256": sha256_file(OUT / out_name)}
    return record


def llama_reads_llmcli(bin_dir: Path, models: dict[str, Path]) -> dict:
    """llama-imatrix merges llmcli's two files (it has to read both)."""
    out_name = "kq-llmcli-merged.imatrix.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / out_name
        cmd = [str(bin_dir / "llama-imatrix"), "-m", str(models["kq"]), "-c", "128", "--in-file", "kq.llmcli.imatrix.gguf",
               "--in-file", "kq.llmcli.imatrix.dat", "-o", str(target)]
        res = run(cmd)
        ok = res.returncode == 0 and target.exists()
        return {"command": f"llama-imatrix -m kq-f16.gguf -c 128 --in-file kq.llmcli.imatrix.gguf --in-file "
                           f"kq.llmcli.imatrix.dat -o {out_name}",
                "ok": ok, "sha256": sha256_file(target) if ok else None,
                "log_tail": [] if ok else res.stderr.splitlines()[-5:]}


def describe_quantized(path: Path) -> dict:
    from llmcli.gguf import GGUFReader

    with GGUFReader(path) as r:
        meta = {k: r.get(k) for k in r.metadata if k.startswith("quantize.imatrix")}
        meta_types = {k: r.metadata[k].type.name for k in meta}
        keys = list(r.metadata)
        tensors = [[t.name, t.type.name, hashlib.sha256(r.tensor_bytes(t).tobytes()).hexdigest()]
                   for t in r.tensors]
    return {"file_sha256": sha256_file(path), "file_bytes": path.stat().st_size, "metadata": meta,
            "metadata_types": meta_types, "last_keys": keys[-6:], "tensors": tensors}


def quantize_runs(bin_dir: Path, models: dict[str, Path]) -> list[dict]:
    exe = str(bin_dir / "llama-quantize")
    kq = str(models["kq"])
    jobs = [(t, ["--imatrix", "kq.imatrix.gguf"]) for t in TYPES]
    jobs += [
        ("Q4_K_M", ["--imatrix", "kq.imatrix.dat"]),
        ("Q3_K_M", ["--imatrix", "kq.imatrix.gguf", "--include-weights", "attn_v", "--include-weights", "ffn_down"]),
        ("Q4_0", ["--imatrix", "kq.imatrix.gguf", "--exclude-weights", "ffn_"]),
        ("Q2_K_S", ["--imatrix", "kq.imatrix.gguf", "--exclude-weights", "attn_k"]),
        ("Q5_K_M", ["--imatrix", "mixtral.imatrix.gguf"]),   # another model's imatrix: sizes differ
        ("Q4_K_M", ["--imatrix", "kq.llmcli.imatrix.gguf"]),
        ("Q2_K_S", ["--imatrix", "kq.llmcli.imatrix.dat"]),
    ]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for type_name, options in jobs:
            out = Path(tmp) / "out.gguf"
            out.unlink(missing_ok=True)
            cmd = [exe, *options, kq, str(out), type_name, "2"]
            res = run(cmd)
            entry = {"type": type_name, "options": options,
                     "command": " ".join(["llama-quantize", *options, "kq-f16.gguf", "out.gguf", type_name, "2"])}
            if res.returncode:
                entry["failed"] = True
                entry["error"] = [line.strip().replace(kq, "kq-f16.gguf")
                                  for line in (res.stdout + res.stderr).splitlines()
                                  if re.search(r"error|ERROR|failed|Missing|different", line)][-6:]
            else:
                entry.update(describe_quantized(out))
                entry["log"] = [line.strip() for line in res.stdout.splitlines()
                                if line.startswith(("load_imatrix", "prepare_imatrix"))]
            runs.append(entry)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", type=Path, default=Path("/work/scratch/llama/build/bin"))
    ap.add_argument("--reference", type=Path, default=Path("/work/shared/reference"))
    ap.add_argument("--quantized-only", action="store_true",
                    help="only (re)make the quantized-model run, keeping the rest of imatrix.json")
    ap.add_argument("--demo-only", action="store_true",
                    help="only (re)make the demo model's runs, keeping the rest of imatrix.json")
    args = ap.parse_args()
    if args.demo_only:
        record = json.loads((OUT / "imatrix.json").read_text())
        record["demo_model"] = demo_model_runs(args.bin)
        (OUT / "imatrix.json").write_text(json.dumps(record, indent=1) + "\n")
        return
    models = {"llama": args.reference / "gguf" / "llama-f32.gguf",
              "mixtral": args.reference / "gguf" / "mixtral-f16.gguf",
              "mixtral_f32": args.reference / "gguf" / "mixtral-f32.gguf",
              "kq": ROOT / "tests" / "data" / "kq" / "kq-f16.gguf"}
    if not (OUT / TEXT).exists():
        raise SystemExit(f"{OUT / TEXT} is missing")
    if args.quantized_only:
        record = json.loads((OUT / "imatrix.json").read_text())
        record["models"]["kq_q4_k_m"], run_record = quantized_model_run(args.bin, models)
        record["llama_imatrix"].update(run_record)
        (OUT / "imatrix.json").write_text(json.dumps(record, indent=1) + "\n")
        return
    record = {"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "text": TEXT,
              "text_sha256": sha256_file(OUT / TEXT),
              "models": {k: {"file": p.name, "sha256": sha256_file(p)} for k, p in models.items()}}
    record["llama_imatrix"] = imatrix_runs(args.bin, models)
    record["models"]["kq_q4_k_m"], run_record = quantized_model_run(args.bin, models)
    record["llama_imatrix"].update(run_record)
    record["llmcli_imatrix"] = llmcli_imatrix(models)
    record["llama_imatrix_reads_llmcli"] = llama_reads_llmcli(args.bin, models)
    (OUT / "imatrix.json").write_text(json.dumps(record, indent=1) + "\n")
    quant = {"llama_cpp": record["llama_cpp"], "input": "tests/data/kq/kq-f16.gguf",
             "input_sha256": record["models"]["kq"]["sha256"], "runs": quantize_runs(args.bin, models)}
    (OUT / "quantize.json").write_text(json.dumps(quant, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
