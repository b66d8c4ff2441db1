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
from .run_cmd import ACTIVATIONS, CACHE_TYPE_K, CACHE_TYPE_V, check_activations

BATCHED_HELP = "Batched decoding (llama-batched-bench)"
BATCHED_COLUMNS = (("PP", "pp", "d"), ("TG", "tg", "d"), ("B", "pl", "d"), ("N_KV", "n_kv", "d"),
                   ("T_PP s", "t_pp", ".3f"), ("S_PP t/s", "speed_pp", ".2f"), ("T_TG s", "t_tg", ".3f"),
                   ("S_TG t/s", "speed_tg", ".2f"), ("T s", "t", ".3f"), ("S t/s", "speed", ".2f"))


def _batched(models, n_pp: str, n_tg: str, n_pl: str, shared_prompt: bool, threads: str, batch_size: str,
             ctx_size: int | None, warmup: bool, fmt: str, cache_type_k: str, cache_type_v: str) -> None:
    """llama-batched-bench's measurement: every (PP, TG, B) once per model, threads and batch size."""
    import json

    import numpy as np

    from ..bench.batched import run_batched
    from ..models import load_model

    if fmt not in ("table", "json", "jsonl"):
        raise BadInputError(f"-o: batched mode prints table, json or jsonl, not '{fmt}'")
    pps, tgs = parse_int_list(n_pp, "-npp", minimum=1), parse_int_list(n_tg, "-ntg", minimum=1)
    pls = parse_int_list(n_pl, "-npl", minimum=1)
    from ..engine.matmul import get_threads

    thread_list = parse_int_list(threads, "-t", minimum=1) if threads else [get_threads()]
    need = max(pps) + max(tgs) + 1
    if ctx_size is not None and ctx_size < need:
        raise BadInputError(f"--ctx-size {ctx_size} is per sequence and must hold PP + TG + 1 = {need} tokens")
    rng = np.random.default_rng(1234)
    rows = []
    for path in models:
        for n_threads in thread_list:
            for n_batch in parse_int_list(batch_size, "-b", minimum=1):
                model = load_model(path, threads=n_threads, ctx_size=ctx_size or need, batch_size=n_batch,
                                   n_seq=max(pls), cache_type_k=cache_type_k, cache_type_v=cache_type_v)
                if warmup:  # compile or load every kernel outside the timings: a prompt as long as the
                    # first timed one (llama-batched-bench warms with 16 tokens, but here a prompt of 16
                    # takes other kernels than one of 128, whose loading then fell in B = 1's T_PP)
                    run_batched(model, min(pps[0], n_batch), 2, min(max(pls), 2), shared_prompt, rng)
                for pp in pps:
                    for tg in tgs:
                        for pl in pls:
                            row = run_batched(model, pp, tg, pl, shared_prompt, rng).to_dict()
                            row["model"] = Path(path).name
                            rows.append(row)
                            if fmt == "table":
                                err_console.print(f"[dim]  pp {pp} tg {tg} B {pl}: S_TG {row['speed_tg']:.2f} t/s[/]",
                                                  highlight=False)
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif fmt == "jsonl":
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in rows))
    else:  # a table per model, threads and batch size, titled with them
        prompt = "one shared prompt" if shared_prompt else "a prompt per sequence"
        for config in dict.fromkeys((r["model"], r["n_threads"], r["n_batch"]) for r in rows):
            table = Table(title=f"{config[0]}: {config[1]} thread(s), n_batch {config[2]}, {prompt}")
            for label, _, _ in BATCHED_COLUMNS:
                table.add_column(label, justify="right")
            for r in rows:
                if (r["model"], r["n_threads"], r["n_batch"]) == config:
                    table.add_row(*(format(r[key], spec) for _, key, spec in BATCHED_COLUMNS))
            out_console.print(table)


@app.command()
def bench(
    model: list[Path] = typer.Option(..., "-m", "--model", help="GGUF model; repeat to compare models."),
    n_prompt: str = typer.Option("512", "-p", "--n-prompt", help="Prompt lengths to process (comma list; 0 = none)."),
    n_gen: str = typer.Option("128", "-n", "--n-gen", help="Token counts to generate (comma list; 0 = none)."),
    pg: list[str] = typer.Option([], "-pg", help="PROMPT,GEN: a prompt then generation, timed together (repeatable)."),
    n_depth: str = typer.Option("0", "-d", "--n-depth", help="Tokens already in the KV cache when each test starts "
                                                       "(comma list; evaluated before, not timed: llama-bench's -d)."),
    repetitions: int = typer.Option(5, "-r", "--repetitions", help="Timed repetitions per test."),
    threads: str = typer.Option("", "-t", "--threads", help="Thread counts (comma list; default: the engine's default, adaptive up to the physical cores)."),
    batch_size: str = typer.Option("512", "-b", "--batch-size", help="Prompt batch sizes (comma list)."),
    ctx_size: int = typer.Option(None, "-c", "--ctx-size", help="KV cache size (default: what each test needs)."),
    cache_type_k: str = CACHE_TYPE_K,
    cache_type_v: str = CACHE_TYPE_V,
    no_warmup: bool = typer.Option(False, "--no-warmup", help="Skip the untimed warm-up run."),
    activations: str = ACTIVATIONS,
    output: str = typer.Option("table", "-o", "--output", help="table, json, jsonl, csv or md."),
    as_json: bool = typer.Option(False, "--json", help="Same as -o json."),
    base: Path = typer.Option(None, "--compare", help="Base results (json/jsonl) to compare against."),
    threshold: float = typer.Option(5.0, "--threshold", help="Percent slowdown --compare tolerates."),
    n_pp: str = typer.Option(None, "-npp", help="Batched mode (llama-batched-bench): prompt tokens per sequence "
                                                "(comma list; default 128).", rich_help_panel=BATCHED_HELP),
    n_tg: str = typer.Option(None, "-ntg", help="Batched mode: tokens generated per sequence (comma list; "
                                                "default 128).", rich_help_panel=BATCHED_HELP),
    n_pl: str = typer.Option(None, "-npl", help="Batched mode: sequences decoded together (comma list, "
                                                "e.g. 1,2,4,8,16).", rich_help_panel=BATCHED_HELP),
    shared_prompt: bool = typer.Option(False, "-pps", help="Batched mode: one prompt shared by every sequence.",
                                       rich_help_panel=BATCHED_HELP),
) -> None:
    """Measure prompt processing (pp) and generation (tg) tokens/s, peak memory and compile time;
    with -npl, batched decoding of many sequences as llama-batched-bench measures it."""
    fmt = "json" if as_json else output
    if fmt not in ("table",) + FORMATS:
        raise BadInputError(f"-o: unknown format '{fmt}' (choose table, {', '.join(FORMATS)})")
    if repetitions < 1:
        raise BadInputError(f"-r: need at least 1 repetition, got {repetitions}")
    check_activations(activations)
    for m in model:
        if not m.is_file():
            raise BadInputError(f"{m}: no such model file")
    if n_pl is None and (n_pp is not None or n_tg is not None or shared_prompt):
        raise BadInputError("-npp, -ntg and -pps measure batched decoding: give -npl too (e.g. -npl 1,2,4,8)")
    if n_pl is not None:
        _batched(model, n_pp or "128", n_tg or "128", n_pl, shared_prompt, threads, batch_size, ctx_size,
                 not no_warmup, fmt, cache_type_k, cache_type_v)
        return
    base_rows = None
    if base is not None:
        try:
            base_rows = load_results(base.read_text(), str(base))
        except OSError as e:
            raise BadInputError(f"{base}: cannot read: {e.strerror}") from None
    thread_list = parse_int_list(threads, "-t", minimum=1) if threads else None  # None: the default
    tests = expand([str(m) for m in model], parse_int_list(n_prompt, "-p"), parse_int_list(n_gen, "-n"),
                   [parse_pg(x) for x in pg], thread_list, parse_int_list(batch_size, "-b", minimum=1), ctx_size,
                   cache_type_k.lower(), cache_type_v.lower(), tuple(parse_int_list(n_depth, "-d")))

    runner = BenchRunner(repetitions, warmup=not no_warmup,
                         progress=lambda msg: err_console.print(f"[dim]{msg}[/]", highlight=False),
                         prompt_activations=activations)
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
                          f"{last['kv_cache_bytes'] / 2**20:.1f} MiB (K {last['type_k']}, V {last['type_v']}, "
                          f"{last['n_ctx']} positions), first-run compile "
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
