"""`llmcli bench`: prompt-processing and generation speed, llama-bench style."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from ..bench.compare import REGRESSION_EXIT_CODE, compare, has_regression
from ..bench.report import FORMATS, load_results, render, table_rows
from ..bench.runner import BenchRunner
from ..bench.spec import expand, parse_int_list, parse_pg
from ..errors import BadInputError
from .app import app, err_console, out_console


@app.command()
def bench(
    model: list[Path] = typer.Option(..., "-m", "--model", help="GGUF model; repeat to compare models."),
    n_prompt: str = typer.Option("512", "-p", "--n-prompt", help="Prompt lengths to process (comma list; 0 = none)."),
    n_gen: str = typer.Option("128", "-n", "--n-gen", help="Token counts to generate (comma list; 0 = none)."),
    pg: list[str] = typer.Option([], "-pg", help="PROMPT,GEN: a prompt then generation, timed together (repeatable)."),
    repetitions: int = typer.Option(5, "-r", "--repetitions", help="Timed repetitions per test."),
    threads: str = typer.Option("", "-t", "--threads", help="Thread counts (comma list; default: physical cores)."),
    batch_size: str = typer.Option("512", "-b", "--batch-size", help="Prompt batch sizes (comma list)."),
    ctx_size: int = typer.Option(None, "-c", "--ctx-size", help="KV cache size (default: what each test needs)."),
    no_warmup: bool = typer.Option(False, "--no-warmup", help="Skip the untimed warm-up run."),
    output: str = typer.Option("table", "-o", "--output", help="table, json, jsonl, csv or md."),
    as_json: bool = typer.Option(False, "--json", help="Same as -o json."),
    base: Path = typer.Option(None, "--compare", help="Base results (json/jsonl) to compare against."),
    threshold: float = typer.Option(5.0, "--threshold", help="Percent slowdown --compare tolerates."),
) -> None:
    """Measure prompt processing (pp) and generation (tg) tokens/s, peak memory and compile time."""
    fmt = "json" if as_json else output
    if fmt not in ("table",) + FORMATS:
        raise BadInputError(f"-o: unknown format '{fmt}' (choose table, {', '.join(FORMATS)})")
    if repetitions < 1:
        raise BadInputError(f"-r: need at least 1 repetition, got {repetitions}")
    for m in model:
        if not m.is_file():
            raise BadInputError(f"{m}: no such model file")
    base_rows = None
    if base is not None:
        try:
            base_rows = load_results(base.read_text(), str(base))
        except OSError as e:
            raise BadInputError(f"{base}: cannot read: {e.strerror}") from None
    from ..engine.matmul import get_threads

    thread_list = parse_int_list(threads, "-t", minimum=1) if threads else [get_threads()]
    tests = expand([str(m) for m in model], parse_int_list(n_prompt, "-p"), parse_int_list(n_gen, "-n"),
                   [parse_pg(x) for x in pg], thread_list, parse_int_list(batch_size, "-b", minimum=1), ctx_size)

    runner = BenchRunner(repetitions, warmup=not no_warmup,
                         progress=lambda msg: err_console.print(f"[dim]{msg}[/]", highlight=False))
    rows = []
    for result in runner.run(tests):
        row = result.to_dict()
        rows.append(row)
        if fmt == "table":
            err_console.print(f"[dim]  {row['test']}: {row['avg_ts']:.2f} ± {row['stddev_ts']:.2f} t/s[/]")

    if fmt == "table":
        header, body = table_rows(rows)
        table = Table()
        for h in header:
            table.add_column(h, justify="right" if h in ("size", "params", "threads", "n_batch", "test", "t/s")
                             else "left")
        for r in body:
            table.add_row(*r)
        out_console.print(table)
        last = rows[-1]
        out_console.print(f"peak RSS {last['peak_rss_bytes'] / 2**20:.1f} MiB, KV cache "
                          f"{last['kv_cache_bytes'] / 2**20:.1f} MiB, first-run compile "
                          f"{sum(r['compile_s'] for r in rows):.2f} s, {last['cpu_info']}")
    else:
        sys.stdout.write(render(rows, fmt))

    if base_rows is not None:
        verdicts = compare(rows, base_rows, threshold, str(base))
        table = Table(title=f"compared with {base} (threshold {threshold:g} %)")
        for h in ("test", "threads", "base t/s", "now t/s", "ratio", "verdict"):
            table.add_column(h, justify="right" if h != "verdict" else "left")
        styles = {"regression": "bold red", "slower": "yellow", "faster": "green", "same": "", "new": "dim"}
        for v in verdicts:
            table.add_row(v.test, str(v.key[3]), f"{v.base_ts:.2f}" if v.base_ts else "-", f"{v.now_ts:.2f}",
                          f"{v.ratio:.3f}" if v.ratio else "-", f"[{styles[v.status]}]{v.status}[/]")
        err_console.print(table)
        if has_regression(verdicts):
            n = sum(v.status == "regression" for v in verdicts)
            err_console.print(f"[bold red]error:[/] {n} test(s) slower than the base by more than {threshold:g} %")
            raise typer.Exit(REGRESSION_EXIT_CODE)
