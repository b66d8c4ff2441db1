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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Show a GGUF file's metadata, tensor types and totals."""
    with GGUFReader(file) as reader:
        info = describe(reader, with_tensors=tensors or as_json)
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
