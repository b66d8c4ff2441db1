"""`llmcli convert DIR`: a Hugging Face checkpoint directory -> GGUF, as llama.cpp converts it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .app import app, out_console
from .format import human_bytes, human_count, parse_size


@app.command()
def convert(
    model_dir: Path = typer.Argument(..., help="Hugging Face model directory (config.json, *.safetensors, tokenizer)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Output GGUF file (default: ./<DIR name>-<outtype>.gguf)."),
    outtype: Optional[str] = typer.Option(None, "--outtype", help="f32, f16 (the default), bf16, q8_0 or auto (bf16 if stored bf16, else f16) as llama.cpp's converter writes them; "
                                           "or a quantization type (Q4_K_M, Q6_K, ... as `llmcli quantize --type`): the f16 "
                                           "conversion quantized in the same pass."),
    max_size: Optional[str] = typer.Option(None, "--max-size", help="Instead of --outtype: the most precise quantized "
                                           "mix whose file fits in this size (4.5GB, 4200MB, 3.9GiB), as "
                                           "`quantize --max-size`."),
    pre: Optional[str] = typer.Option(None, "--pre",
                                      help="Byte-level BPE pre-tokenizer name (llama-bpe, qwen2, ...) when "
                                           "llama.cpp's hash table does not know the tokenizer."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Convert a Hugging Face checkpoint to GGUF (byte-identical to llama.cpp's converter)."""
    from ..convert import convert as run_convert
    from ..convert.pipeline import OUTTYPE_CHOICES

    if outtype is not None and max_size is not None:
        raise typer.BadParameter("give either --outtype or --max-size", param_hint="--outtype / --max-size")
    try:
        max_bytes = parse_size(max_size, "--max-size") if max_size is not None else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--max-size") from None
    outtype = outtype or ("" if max_bytes is not None else "f16")
    if outtype.lower() in OUTTYPE_CHOICES:
        summary = run_convert(model_dir, output, outtype=outtype.lower(), pre=pre, force=force,
                              progress=sys.stderr.isatty() and not as_json)
    else:  # a llama-quantize TYPE (Q4_K_M, ...): convert to f16 and quantize in one streaming pass
        from ..convert.quantized import convert_quantized

        summary = convert_quantized(model_dir, output, outtype or None, pre=pre, force=force,
                                    progress=sys.stderr.isatty() and not as_json, max_size=max_bytes)
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2))
        return
    types = ", ".join(f"{name}: {n}" for name, n in summary.type_counts.items())
    out_console.print(
        f"wrote [bold]{summary.output}[/]: {summary.architecture} ({summary.hf_architecture}), "
        f"{summary.outtype}, {summary.tensors} tensors ({types}), {human_count(summary.parameters)} parameters, "
        f"{human_bytes(summary.bytes)} in {summary.seconds:.2f} s"
    )
