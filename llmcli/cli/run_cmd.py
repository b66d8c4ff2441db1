"""`llmcli run -m MODEL.gguf -p PROMPT`: stream the model's greedy continuation of a prompt."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import BadInputError
from .app import app


@app.command()
def run(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model file."),
    prompt: str = typer.Option(..., "-p", "--prompt", help="Text to continue."),
    n_predict: int = typer.Option(128, "-n", "--n-predict", help="Maximum number of tokens to generate."),
    threads: int = typer.Option(0, "-t", "--threads", help="CPU threads (0: one per physical core)."),
    ctx_size: int = typer.Option(0, "-c", "--ctx-size",
                                 help="Context size in tokens (0: the model's, at most 4096)."),
    batch_size: int = typer.Option(512, "-b", "--batch-size", help="Prompt tokens evaluated per batch."),
) -> None:
    """Generate text greedily (always the most likely next token) and print it as it comes."""
    from ..engine.generate import generate
    from ..engine.matmul import default_threads
    from ..engine.tokenizer import Tokenizer
    from ..models import load_model

    if n_predict < 0:
        raise BadInputError(f"--n-predict must be 0 or more, got {n_predict}")
    if batch_size <= 0:
        raise BadInputError(f"--batch-size must be positive, got {batch_size}")
    if ctx_size < 0:
        raise BadInputError(f"--ctx-size must be positive, got {ctx_size}")
    lm = load_model(model, threads=threads or default_threads(), ctx_size=ctx_size or None,
                    batch_size=batch_size)
    tokenizer = Tokenizer.from_gguf(lm.reader)
    ids = tokenizer.tokenize(prompt, add_special=True, parse_special=True)
    if not ids:
        raise BadInputError("the prompt is empty and the model adds no BOS token to start from")
    if len(ids) + n_predict > lm.n_ctx:
        raise BadInputError(f"the prompt ({len(ids)} tokens) plus --n-predict {n_predict} does not fit "
                            f"the context of {lm.n_ctx} tokens (raise --ctx-size or lower --n-predict)")
    stream = tokenizer.stream()
    for token in generate(lm, ids, n_predict):
        if tokenizer.is_eog(token):  # end of generation: stop before computing another token
            break
        sys.stdout.write(stream.feed(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    sys.stdout.flush()
