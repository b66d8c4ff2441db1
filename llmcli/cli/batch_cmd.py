"""`llmcli batch`: generate for every line of a JSONL file, continuous batching, resumable output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from ..errors import BadInputError
from ..generation.sampling import SamplingParams
from .app import app, err_console
from .progress import showing, terminal_bar
from .run_cmd import LOAD_OPTIONS, MODEL, SAMPLING_OPTIONS, STOP, _check_n_predict, _load, option_groups

RAY_HELP = "On a Ray cluster (pip install \"llmcli[ray]\")"
# `--ray` and `--ray-address`, shared with `llmcli serve`
RAY = typer.Option(False, "--ray", help="Run on a Ray cluster (--ray-address's, else RAY_ADDRESS's, else a local "
                                        "one started for this command).", rich_help_panel=RAY_HELP)
RAY_ADDRESS = typer.Option(None, "--ray-address", help="The Ray cluster to join (host:port, ray://host:port, "
                                                       "auto).", rich_help_panel=RAY_HELP)


class _Tally:
    """Counts records as they are written, and shows them (a progress bar on a terminal)."""

    def __init__(self, total: int, skipped: int):
        self.done = self.errors = self.generated = self.prompt = 0
        self.skipped = skipped
        self.began = time.perf_counter()
        self.bar = terminal_bar("[dim]generating", "[dim]{task.fields[rate]} t/s")
        self.task = self.bar.add_task("", total=total, completed=skipped, rate="-") if self.bar else None

    def running(self):
        return showing(self.bar)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.began

    @property
    def rate(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def add(self, record: dict) -> None:
        if "error" in record:
            self.errors += 1
            err_console.print(f"[yellow]line {record['line']}: {record['error']}[/]", highlight=False, soft_wrap=True)
        else:
            self.done += 1
            self.generated += len(record["tokens"])
            self.prompt += record["prompt_tokens"]
        if self.bar is not None:
            self.bar.update(self.task, advance=1, rate=f"{self.rate:.1f}")

    def summary(self, out: Path) -> dict:
        return {"output": str(out), "done": self.done, "errors": self.errors, "skipped": self.skipped,
                "prompt_tokens": self.prompt, "generated_tokens": self.generated,
                "seconds": round(self.seconds, 3), "tokens_per_second": round(self.rate, 3)}


def _count_lines(path: Path) -> int:
    """Non-blank lines of the input: the progress bar's total."""
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError as e:
        raise BadInputError(f"{path}: cannot read the input file: {e.strerror}") from None


@app.command()
@option_groups
def batch(
    input: Path = typer.Argument(..., help="JSONL input: a prompt string or an object with prompt or messages "
                                           "(and optional id, metadata, max_tokens, temperature, top_k, top_p, "
                                           "min_p, repeat_penalty, seed, stop) on each line."),
    output: Path = typer.Argument(..., help="JSONL output, one record per input line; an existing one is "
                                            "resumed (ids already in it are skipped)."),
    model: Path = MODEL,
    parallel: int = typer.Option(16, "-np", "--parallel", help="Sequences generated at once (slots)."),
    max_tokens: int = typer.Option(-1, "-n", "--max-tokens",
                                   help="Tokens per line (-1: until end of generation or a full context)."),
    stop: list[str] = STOP,
    load: dict = LOAD_OPTIONS,
    sampling: dict = SAMPLING_OPTIONS,
    chat: bool = typer.Option(False, "--chat", help="Prompt lines are user messages, rendered with the chat "
                                                    "template (messages lines always are)."),
    ray: bool = RAY,
    ray_address: str = RAY_ADDRESS,
    concurrency: int = typer.Option(None, "--concurrency",
                                    help="Ray workers, each loading the model once (default: CPUs / --num-cpus).",
                                    rich_help_panel=RAY_HELP),
    num_cpus: int = typer.Option(None, "--num-cpus", help="CPUs per Ray worker, and its numba threads "
                                                          "(default: --threads, else 1).", rich_help_panel=RAY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary (counts, tokens, tokens/s) on stdout."),
) -> None:
    """Generate for every line of a JSONL file with continuous batching; records in input order."""
    from ..batch import BatchSettings, ResultFile, read_jobs

    params = SamplingParams(**sampling).validate()
    _check_n_predict(max_tokens)
    if parallel < 1:
        raise BadInputError(f"--parallel must be at least 1, got {parallel}")
    if not ray and (concurrency is not None or num_cpus is not None or ray_address is not None):
        raise BadInputError("--concurrency, --num-cpus and --ray-address apply to --ray")
    for name, value in (("--concurrency", concurrency), ("--num-cpus", num_cpus)):
        if value is not None and value < 1:
            raise BadInputError(f"{name} must be at least 1, got {value}")
    if model is not None and not model.is_file():
        raise BadInputError(f"{model}: no such model file")
    if input.resolve() == output.resolve():
        raise BadInputError(f"{output}: the output cannot be the input file")
    total = _count_lines(input)
    settings = BatchSettings(max_tokens=max_tokens, params=params, stop=tuple(stop), chat=chat)
    if ray:
        from ..batch.ray_data import RayJob
        from ..ray_support import import_ray

        import_ray("data")  # before any work: without Ray, say how to install it
    results = ResultFile(output)
    if results.dropped_torn_line:
        err_console.print(f"[yellow]{output}: dropped a torn last line (an interrupted run); it is written again[/]",
                          soft_wrap=True)
    skipped = len(results.done)
    jobs = read_jobs(input, settings, results.done)
    tally = None
    try:
        if ray:
            runner = RayJob(model, address=ray_address, concurrency=concurrency,
                            num_cpus=num_cpus or load["threads"] or 1, parallel=parallel, ctx_size=load["ctx_size"],
                            batch_size=load["batch_size"],
                            load_options=dict(use_mmap=not load["no_mmap"], mlock=load["mlock"],
                                              cache_type_k=load["cache_type_k"], cache_type_v=load["cache_type_v"]))
            records = runner.run(jobs)
        else:
            from ..batch import run_jobs

            llm = _load(model, **load, parallel=parallel)
            records = run_jobs(llm, jobs)
        tally = _Tally(total, skipped)
        with tally.running():
            for record in records:
                results.write(record)
                tally.add(record)
    finally:
        results.close()
    summary = tally.summary(output)
    if as_json:
        print(json.dumps(summary))
    else:
        err_console.print(
            f"[dim]{output}: {summary['done']} generated, {summary['errors']} error record(s), "
            f"{summary['skipped']} already there | {summary['generated_tokens']} tokens in "
            f"{summary['seconds']:.1f} s, {summary['tokens_per_second']:.2f} t/s[/]", highlight=False, soft_wrap=True)
