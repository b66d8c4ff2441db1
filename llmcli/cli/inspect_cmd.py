"""`llmcli inspect FILE.gguf`: metadata, tensors and totals of a GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from ..gguf import GGUFReader
from ..gguf.summary import describe
from .app import app, out_console
from .format import human_bytes, human_count


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="GGUF file to describe."),
    tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor."),
    ctx_size: int = typer.Option(None, "--ctx-size", "-c", min=1,
                                 help="Context per sequence for the memory estimate (default: as run chooses)."),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1, help="Sequences for the memory estimate."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Show a GGUF file's metadata, tensor types and totals, and the memory it needs to run."""
    with GGUFReader(file) as reader:
        info = describe(reader, with_tensors=tensors or as_json)
        info["memory"] = _memory_estimate(reader, ctx_size, parallel)
    if as_json:
        print(json.dumps(info, indent=2, ensure_ascii=False, default=str))
        return

    meta = Table(title=f"{file}  (GGUF v{info['gguf_version']})", show_lines=False, expand=False)
    meta.add_column("key", style="cyan", no_wrap=True)
    meta.add_column("type", style="dim")
    meta.add_column("value", overflow="fold")
    for key, entry in info["metadata"].items():
        value = entry["value"]
        if isinstance(value, dict) and "length" in value:
            shown = ", ".join(repr(v) for v in value["head"])
            value = f"[{shown}, ...] ({value['length']} items)"
        elif isinstance(value, str) and len(value) > 300:
            value = repr(value[:300]) + f"... ({len(entry['value'])} chars)"
        else:
            value = repr(value) if isinstance(value, str) else str(value)
        meta.add_row(Text(key), entry["type"], Text(value))
    out_console.print(meta)

    if tensors:
        table = Table(title="tensors")
        table.add_column("#", justify="right", style="dim")
        table.add_column("name", style="cyan")
        table.add_column("shape", justify="right")
        table.add_column("type")
        table.add_column("bytes", justify="right")
        for i, t in enumerate(info["tensors"]):
            table.add_row(str(i), Text(t["name"]), " x ".join(map(str, t["shape"])), t["type"],
                          f"{t['bytes']:,}")
        out_console.print(table)

    types = ", ".join(f"{name}: {n}" for name, n in info["type_counts"].items())
    out_console.print(
        f"[bold]{info['architecture'] or 'unknown architecture'}[/], file type {info['file_type']}, "
        f"{info['n_tensors']} tensors ({types}), {human_count(info['n_parameters'])} parameters, "
        f"{human_bytes(info['file_size'])}, {info['bits_per_weight']:.2f} bits per weight"
    )
    mem = info["memory"]
    if "total" in mem:
        out_console.print(
            f"memory to run {mem['n_seq']} x {mem['n_ctx']} positions: [bold]{human_bytes(mem['total'])}[/] "
            f"(weights {human_bytes(mem['weights'])} mapped + {human_bytes(mem['output_copy'])} output copy, "
            f"KV cache {human_bytes(mem['kv'])}, buffers {human_bytes(mem['buffers'])}, tokenizer "
            f"{human_bytes(mem['tokenizer'])}, kernels {human_bytes(mem['runtime'])}); "
            f"{human_bytes(mem['available'])} available now")
    else:
        out_console.print(f"[dim]memory estimate: {mem['error']}[/]")


def _memory_estimate(reader: GGUFReader, ctx_size: int | None, parallel: int) -> dict:
    """The memory plan `run` checks before loading (models.memory), or why there is none."""
    from ..errors import LlmcliError
    from ..models.memory import available_bytes
    from ..models.transformer import plan_memory

    try:
        return {**plan_memory(reader, ctx_size, parallel).as_dict(), "available": available_bytes()}
    except LlmcliError as e:  # e.g. an architecture the engine does not run: the file is still described
        return {"error": str(e)}
