"""`llmcli quantize IN.gguf OUT.gguf --type Q4_K_M`: llama-quantize's mixes, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..errors import BadInputError
from ..quantize import quantize_file
from ..quants.mixes import (IMATRIX_ONLY_MIXES, SUPPORTED_MIXES, QuantizeOptions, parse_ggml_type,
                            parse_tensor_type_override)
from .app import app, err_console, out_console
from .format import human_bytes, human_count


@app.command()
def quantize(
    input: Path = typer.Argument(..., help="GGUF model to quantize (F32/F16/BF16, or quantized with --allow-requantize)."),
    output: Optional[Path] = typer.Argument(None, help="Output GGUF file (not needed with --dry-run)."),
    type: str = typer.Option(..., "--type", "-t", help=f"Quantization type: {', '.join(SUPPORTED_MIXES)}; "
                             f"with --imatrix also {', '.join(IMATRIX_ONLY_MIXES)}."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="Importance matrix (GGUF or .dat, see `llmcli imatrix`): weighted quantizers, as llama-quantize --imatrix."),
    include_weights: List[str] = typer.Option([], "--include-weights", help="Use the importance matrix only for tensors whose name contains S (repeatable)."),
    exclude_weights: List[str] = typer.Option([], "--exclude-weights", help="Do not use it for tensors whose name contains S (repeatable)."),
    pure: bool = typer.Option(False, "--pure", help="Every quantizable tensor gets the base type: no mix rules."),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", help="ggml type for output.weight."),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type", help="ggml type for token_embd.weight."),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="Copy output.weight unchanged."),
    tensor_type: List[str] = typer.Option([], "--tensor-type", help="REGEX=TYPE: tensors whose name matches get TYPE (repeatable, first match wins)."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Allow quantizing tensors that are already quantized (loses quality)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the resulting size; write nothing."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Worker threads for the kernels (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Quantize a GGUF model with llama-quantize's per-tensor type choices and block formats."""
    options = QuantizeOptions(
        pure=pure,
        output_tensor_type=parse_ggml_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else None,
        token_embedding_type=parse_ggml_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else None,
        leave_output_tensor=leave_output_tensor,
        tensor_types=[parse_tensor_type_override(spec) for spec in tensor_type],
    )
    if output is None and not dry_run:
        raise BadInputError("quantize: give an OUTPUT file (or --dry-run to only see the plan)")
    report = quantize_file(input, None if dry_run else output, type, options,
                           allow_requantize=allow_requantize, dry_run=dry_run, threads=threads,
                           force=force, progress=not as_json, imatrix=imatrix,
                           include_weights=include_weights, exclude_weights=exclude_weights)
    info = report.to_json()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    _render(info)


def _render(info: dict) -> None:
    title = f"{info['input']} -> {info['output'] or '(dry run)'} as {info['type']}"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("tensor", style="cyan", overflow="fold")
    table.add_column("shape", justify="right", no_wrap=True, min_width=9)
    table.add_column("type", no_wrap=True, min_width=12)
    table.add_column("size", justify="right", no_wrap=True, min_width=10)
    table.add_column("rel.RMSE", justify="right", no_wrap=True, min_width=8)
    for t in info["tensors"]:
        changed = t["from_type"] != t["to_type"]
        types = f"{t['from_type']} -> [bold]{t['to_type']}[/]" if changed else t["from_type"]
        if t["how"].startswith("fallback"):
            types += " [dim](fallback)[/]"
        elif t["how"].startswith("--"):
            types += " [dim](option)[/]"
        if t.get("imatrix"):
            types += " [dim](imatrix)[/]"
        rmse = f"{t['rmse']:.4f}" if t.get("rmse") is not None else ""
        table.add_row(Text(t["name"]), "x".join(map(str, t["shape"])), types, human_bytes(t["bytes"]), rmse)
    out_console.print(table)
    tot = info["totals"]
    verb = "would be" if info["dry_run"] else "written"
    line = (f"{tot['n_tensors']} tensors ({tot['n_converted']} converted), "
            f"{human_count(tot['n_parameters'])} parameters: "
            f"{human_bytes(tot['tensor_bytes_in'])} ({tot['bits_per_weight_in']:.2f} bpw) -> "
            f"{human_bytes(tot['tensor_bytes_out'])} ({tot['bits_per_weight_out']:.2f} bpw); "
            f"file {human_bytes(tot['file_bytes_out'])} {verb}")
    if not info["dry_run"]:
        line += f" in {tot['seconds']:.1f} s"
        if tot["input_mb_per_s"]:
            line += f" ({tot['input_mb_per_s']:.1f} MB/s of input)"
    out_console.print(line)
    if info.get("imatrix"):
        im = info["imatrix"]
        out_console.print(f"importance matrix {im['file']}: {im['entries']} entries, {im['chunks']} chunks; "
                          f"{im['tensors_weighted']} tensors quantized with it")
    for warning in info["warnings"]:
        err_console.print(f"[yellow]note:[/] {warning}")
    if tot["n_fallback"]:
        err_console.print(f"[yellow]note:[/] {tot['n_fallback']} tensor(s) have rows the block size does "
                          f"not divide and use a fallback type (as llama-quantize does)")
