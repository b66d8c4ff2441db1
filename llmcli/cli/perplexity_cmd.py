"""`llmcli perplexity`: a model's perplexity over a text, and KL divergence against a base model,
printed as llama.cpp's `llama-perplexity` prints them (the figures come from llmcli.evaluation)."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

import typer

from ..errors import BadInputError
from .app import app, err_console
from .progress import showing, terminal_bar
from .run_cmd import ACTIVATIONS, CACHE_TYPE_K, CACHE_TYPE_V, check_activations

QUALITY_HELP = "KL divergence against a base model"
KLD_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
              "              Δp RMS            Same top p")


class _CFloat(float):
    """A figure formatted as C's printf does: an undefined one (the square root of a negative
    variance, 0/0) prints as "-nan", as glibc prints the NaN such an operation gives."""

    def __format__(self, spec: str) -> str:
        if math.isnan(self):
            width = spec.split(".")[0].lstrip("<>^=+- ")
            return "-nan".rjust(int(width) if width.isdigit() else 0)
        return float.__format__(self, spec)

    def __mul__(self, other) -> "_CFloat":  # percentages (100 * x) keep the formatting
        return _CFloat(float(self) * other)

    __rmul__ = __mul__


def _c_floats(figures: dict) -> dict:
    return {k: _c_floats(v) if isinstance(v, dict) else _CFloat(v) if isinstance(v, float) else v
            for k, v in figures.items()}


def _json_figures(value):
    """JSON has no NaN or infinity: undefined figures become null."""
    if isinstance(value, dict):
        return {k: _json_figures(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_figures(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _kld_chunk_line(n: int, f: dict) -> str:
    f = _c_floats(f)
    return (f"{n:4d}    {f['ppl']:9.4f} ± {f['ppl_unc']:9.4f}    {f['ln_ppl_ratio']:10.5f} ± "
            f"{f['ln_ppl_ratio_unc']:10.5f}    {f['kld']:10.5f} ± {f['kld_unc']:10.5f}    "
            f"{100 * f['p_diff_rms']:6.3f} ± {100 * f['p_diff_rms_unc']:6.3f} %    "
            f"{100 * f['same_top']:6.3f} ± {100 * f['same_top_unc']:6.3f} %")


# Labels of the quantile lines, 7 characters wide as llama.cpp's column.
_QUANTILE_NAMES = {"maximum": "Maximum", "median": "Median ", "minimum": "Minimum"}


def _quantile_lines(figures: dict, what: str, unit: str = "", scale: float = 1.0, spec: str = "10.6f") -> list[str]:
    """'Maximum KLD:   0.123456', '99.9%   KLD: ...', ' 5.0%   KLD: ...': one line per quantile key
    (maximum, 'NN.N%', median, minimum) of figures, in its order."""
    return [f"{_QUANTILE_NAMES.get(key) or f'{key:>5}  '} {what}: {scale * value:{spec}}{unit}"
            for key, value in figures.items() if key in _QUANTILE_NAMES or key.endswith("%")]


def kld_statistics_lines(s: dict) -> list[str]:
    """llama.cpp's three final blocks."""
    s = _c_floats(s)
    p, k, t = s["perplexity"], s["kl_divergence"], s["token_probability"]
    return ["====== Perplexity statistics ======",
            f"Mean PPL(Q)                   : {p['ppl']:10.6f} ± {p['ppl_unc']:10.6f}",
            f"Mean PPL(base)                : {p['ppl_base']:10.6f} ± {p['ppl_base_unc']:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * p['ln_ppl_correlation']:6.2f}%",
            f"Mean ln(PPL(Q)/PPL(base))     : {p['ln_ppl_ratio']:10.6f} ± {p['ln_ppl_ratio_unc']:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {p['ppl_ratio']:10.6f} ± {p['ppl_ratio_unc']:10.6f}",
            f"Mean PPL(Q)-PPL(base)         : {p['ppl_diff']:10.6f} ± {p['ppl_diff_unc']:10.6f}",
            "",
            "====== KL divergence statistics ======",
            f"Mean    KLD: {k['mean']:10.6f} ± {k['mean_unc']:10.6f}",
            *_quantile_lines(k, "KLD"),
            "",
            "====== Token probability statistics ======",
            f"Mean    Δp: {100 * t['mean_p_diff']:6.3f} ± {100 * t['mean_p_diff_unc']:5.3f} %",
            *_quantile_lines(t, "Δp", "%", 100.0, "6.3f"),
            f"RMS Δp    : {100 * t['rms_p_diff']:6.3f} ± {100 * t['rms_p_diff_unc']:5.3f} %",
            f"Same top p: {100 * t['same_top']:6.3f} ± {100 * t['same_top_unc']:5.3f} %"]


class _Report:
    """Where a run's lines go: with a progress bar on a terminal's stderr, the figures are printed
    when it is done (stdout and the bar do not share a line); otherwise each as it comes."""

    def __init__(self, as_json: bool, description: str):
        self.as_json = as_json
        self.bar = terminal_bar("[dim]{task.description}", "[dim]PPL {task.fields[ppl]}")
        self.task = self.bar.add_task(description, total=None, ppl="-") if self.bar else None
        self.held: list[str] = []

    @contextlib.contextmanager
    def running(self):
        with showing(self.bar):
            yield
        if self.bar is not None:
            self.flush()

    def on_chunk(self, done: int, total: int, ppl: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, ppl=f"{ppl:.4f}")

    def emit(self, text: str, end: str = "\n") -> None:
        if self.as_json:
            return
        if self.bar is not None:
            self.held.append(text + end)
            return
        sys.stdout.write(text + end)
        sys.stdout.flush()

    def flush(self) -> None:
        sys.stdout.write("".join(self.held))
        sys.stdout.flush()
        self.held.clear()


def _load(model_path: Path | None, threads: int | None, n_ctx: int, n_batch: int, activations: str,
          cache_types: tuple[str, str]):
    from ..evaluation.measure import chunks_per_pass
    from ..models import load_model
    from ..vocab import Tokenizer
    from .run_cmd import _loading_status  # the loading spinner and "compiling kernels" notice `run` shows

    if threads is not None and threads <= 0:
        raise BadInputError(f"--threads must be positive, got {threads}")
    if model_path is None:
        from ..demo import demo_model_path

        model_path = demo_model_path()
    with _loading_status(f"loading {model_path.name}"):
        model = load_model(model_path, threads=threads, ctx_size=n_ctx, batch_size=min(n_batch, n_ctx),
                           n_seq=chunks_per_pass(n_ctx, n_batch), cache_type_k=cache_types[0],
                           cache_type_v=cache_types[1], prompt_activations=activations)
    return model, Tokenizer.from_gguf(model.reader)


def _speed_line(result, what: str) -> str:
    compiled = f", compiling kernels {result.compile_seconds:.1f} s (not in the rate)" if result.compile_seconds else ""
    return (f"[dim]{what}: {result.n_chunk} chunks of {result.n_ctx} tokens ({result.n_seq} per pass) in "
            f"{result.seconds:.2f} s, {result.tokens_per_second:.2f} tokens/s{compiled}[/]")


@app.command()
def perplexity(
    model: Path = typer.Option(None, "-m", "--model", help="GGUF model file (default: the demo model)."),
    file: Path = typer.Option(None, "-f", "--file", help="Text to measure (UTF-8); not needed with --kl-divergence."),
    ctx_size: int = typer.Option(None, "-c", "--ctx-size",
                                 help="Tokens per chunk; the second half of each is scored (default 512; "
                                      "with --kl-divergence, the base file's)."),
    chunks: int = typer.Option(-1, "--chunks", help="Chunks to evaluate at most (-1: all the text has; with "
                                                      "--kl-divergence, all the base file has)."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size",
                                   help="Tokens per pass: n_batch / n_ctx chunks are evaluated together."),
    threads: int = typer.Option(None, "-t", "--threads", help="CPU threads (default: up to the physical cores)."),
    kld_base: Path = typer.Option(None, "--kl-divergence-base", help="Base file: written (the model's "
                                  "log-probabilities), or read with --kl-divergence.", rich_help_panel=QUALITY_HELP),
    kld: bool = typer.Option(False, "--kl-divergence", help="Compare the model with the base file's log-probabilities.",
                             rich_help_panel=QUALITY_HELP),
    activations: str = ACTIVATIONS,
    cache_type_k: str = CACHE_TYPE_K,
    cache_type_v: str = CACHE_TYPE_V,
    force: bool = typer.Option(False, "--force", help="Replace an existing --kl-divergence-base file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every figure."),
) -> None:
    """Perplexity of a model over a text, as llama.cpp's llama-perplexity computes it; with
    --kl-divergence-base, also save the log-probabilities a --kl-divergence run compares against."""
    check_activations(activations)
    if batch_size < 1:
        raise BadInputError(f"-b/--batch-size must be positive, got {batch_size}")
    if chunks == 0 or chunks < -1:
        raise BadInputError(f"--chunks must be -1 (all) or at least 1, got {chunks}")
    max_chunks = None if chunks == -1 else chunks
    if kld:
        if kld_base is None:
            raise BadInputError("--kl-divergence needs --kl-divergence-base FILE (the base model's log-probabilities)")
        _kl_divergence(model, file, ctx_size, max_chunks, batch_size, threads, activations, kld_base, as_json,
                       (cache_type_k, cache_type_v))
    else:
        if file is None:
            raise BadInputError("no text: give the file to measure with -f FILE")
        _perplexity(model, file, ctx_size, max_chunks, batch_size, threads, activations, kld_base, force, as_json,
                    (cache_type_k, cache_type_v))


def _perplexity(model, file, ctx_size, max_chunks, batch_size, threads, activations, kld_base, force,
                as_json, cache_types) -> None:
    from ..atomic import check_output_path
    from ..evaluation import perplexity, read_text_file, text_chunks
    from ..evaluation.chunks import check_ctx

    n_ctx = check_ctx(512 if ctx_size is None else ctx_size)
    if kld_base is not None:
        check_output_path(kld_base, force)  # before any work
    text = read_text_file(file)
    llm, tokenizer = _load(model, threads, n_ctx, batch_size, activations, cache_types)
    chunks = text_chunks(tokenizer, text, n_ctx, max_chunks)
    if not as_json:
        err_console.print(f"[dim]perplexity: the text has {chunks.n_text_tokens} tokens; {chunks.n_chunk} chunks of "
                          f"{n_ctx}, batch {batch_size}[/]", highlight=False)
    report = _Report(as_json, "perplexity")

    def on_chunk(done: int, total: int, ppl: float) -> None:
        report.on_chunk(done, total, ppl)
        report.emit(f"[{done}]{ppl:.4f},", end="")

    with report.running():
        result = perplexity(llm, chunks, batch_size, base_out=kld_base, force=force, on_chunk=on_chunk)
        report.emit("")
        if result.ppl_error is not None:
            report.emit(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.ppl_error:.5f}")
    if as_json:
        print(json.dumps(_json_figures({"model": str(llm.path), "text_file": str(file), "activations": activations,
                                        **result.to_dict()}), ensure_ascii=False))
        return
    if result.ppl_error is None:
        err_console.print("[yellow]the tokens' log-likelihoods have no spread: no uncertainty to estimate[/]")
    err_console.print(_speed_line(result, "perplexity"), highlight=False)
    if kld_base is not None:
        err_console.print(f"[dim]saved the log-probabilities to {kld_base}[/]", highlight=False)


def _kl_divergence(model, file, ctx_size, max_chunks, batch_size, threads, activations, kld_base, as_json,
                   cache_types) -> None:
    from ..evaluation import KLDBaseFile, kl_divergence
    from ..evaluation.measure import MIN_COUNT_FOR_STATISTICS

    base = KLDBaseFile(kld_base)
    n_ctx = base.header.n_ctx
    if ctx_size is not None and ctx_size < n_ctx:
        raise BadInputError(f"{kld_base}: computed with a context of {n_ctx}; -c {ctx_size} is smaller "
                            f"(leave -c out to use the file's)")
    if file is not None:
        err_console.print(f"[dim]{file}: not read: the base file holds the tokens to evaluate[/]", highlight=False)
    llm, tokenizer = _load(model, threads, n_ctx, batch_size, activations, cache_types)
    report = _Report(as_json, "kl-divergence")
    report.emit(KLD_HEADER)

    def on_chunk(done: int, total: int, figures: dict) -> None:
        report.on_chunk(done, total, figures["ppl"])
        report.emit(_kld_chunk_line(done, figures))

    with report.running():
        result = kl_divergence(llm, tokenizer, base, batch_size, max_chunks, on_chunk=on_chunk)
        report.emit("")
        for line in kld_statistics_lines(result.statistics) if result.statistics is not None else ():
            report.emit(line)
    if as_json:
        print(json.dumps(_json_figures({"model": str(llm.path), "activations": activations, **result.to_dict()}),
                         ensure_ascii=False))
        return
    if result.statistics is None:
        err_console.print(f"[yellow]{result.n_scored} tokens scored: the final statistics need at least "
                          f"{MIN_COUNT_FOR_STATISTICS} (a longer text or more chunks for the base file)[/]")
    err_console.print(_speed_line(result, "kl-divergence"), highlight=False)
