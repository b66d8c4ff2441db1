"""`llmcli imatrix -m MODEL.gguf -f TEXT -o imatrix.gguf`: an importance matrix, as llama-imatrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .app import app, err_console, out_console


@app.command()
def imatrix(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="GGUF model to evaluate."),
    text: Optional[Path] = typer.Option(None, "--file", "-f", help="Text to evaluate the model on (UTF-8)."),
    output: Path = typer.Option(Path("imatrix.gguf"), "--output", "-o", help="Importance matrix to write."),
    ctx_size: int = typer.Option(512, "--ctx-size", "-c", help="Tokens per chunk (each chunk starts from an empty context)."),
    chunks: int = typer.Option(-1, "--chunks", help="Evaluate at most N chunks (default: all the text holds)."),
    from_chunk: int = typer.Option(0, "--from-chunk", "--chunk", help="Skip the text's first N chunks."),
    process_output: bool = typer.Option(False, "--process-output", help="Also collect output.weight's activations."),
    in_file: List[Path] = typer.Option([], "--in-file", help="Importance matrix (GGUF or .dat) to add in (repeatable); without -f the files are only combined."),
    output_format: str = typer.Option("gguf", "--output-format", help="gguf, or dat (llama.cpp's legacy format)."),
    no_ppl: bool = typer.Option(False, "--no-ppl", help="Skip the running perplexity (no logits needed, faster)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Threads (default: one per physical core)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a summary."),
) -> None:
    """Compute an importance matrix for `quantize --imatrix` (or combine several), as llama-imatrix."""
    from ..imatrix.collect import run_imatrix

    report = run_imatrix(model, text, output, n_ctx=ctx_size, n_chunks=chunks, from_chunk=from_chunk,
                         process_output=process_output, compute_ppl=not no_ppl, in_files=in_file,
                         output_format=output_format.lower(), threads=threads, force=force,
                         progress=not as_json)
    info = report.to_json()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    what = f"{info['n_chunks']} chunks of {info['chunk_size']} tokens" if info["text"] else "no new chunks"
    merged = f", {len(info['in_files'])} file(s) added in" if info["in_files"] else ""
    out_console.print(f"{info['output']}: {info['n_entries']} entries ({info['format']}), {what}{merged}; "
                      f"{info['chunk_count']} chunks in all, in {info['seconds']:.1f} s")
    ppl = info["perplexity"]
    if ppl["final"] is not None:
        error = f" +/- {ppl['error']:.5f}" if ppl["error"] is not None else ""
        out_console.print(f"perplexity {ppl['final']:.4f}{error} (second half of each chunk)")
    for entry in info["partial"]:
        err_console.print(f"[yellow]note:[/] '{entry['name']}' has data for {entry['percent']:.1f}% of its "
                          f"matrices (experts no token was routed to)")
    for name in info["skipped"]:
        err_console.print(f"[yellow]note:[/] '{name}' has no data and is left out of the .dat file")
