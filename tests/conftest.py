"""Shared fixtures: where the test data lives, and running the CLI in-process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


class CliResult:
    def __init__(self, exit_code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr


def run_cli(*args, input: str | None = None) -> CliResult:
    """Run `llmcli ARGS...` in this process with captured stdout/stderr and the given stdin."""
    from llmcli.cli.app import run_app

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(input or "")
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_app([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdin = old_stdin
    return CliResult(code, out.getvalue(), err.getvalue())


def gguf_record(path: Path) -> dict:
    """What the convert tests compare with llama.cpp's records: metadata (types, values, order), per-tensor
    type/shape/sha256, tensor order and the whole file's sha256 (tests/data/gguf_ref/*.json format)."""
    from llmcli.gguf import GGUFReader

    with GGUFReader(path) as r:
        meta = {k: {"type": mv.type.name, "item_type": mv.item_type.name if mv.item_type is not None else None,
                    "value": mv.to_python()} for k, mv in r.metadata.items()}
        tensors = {t.name: {"type": t.type.name, "shape": list(t.shape),
                            "sha256": hashlib.sha256(r.tensor_bytes(t).tobytes()).hexdigest()} for t in r.tensors}
        order = [t.name for t in r.tensors]
    return {"metadata": meta, "tensors": tensors, "tensor_order": order,
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture
def cli():
    """`res = cli("inspect", path, "--json")` -> res.exit_code, res.stdout, res.stderr."""
    return run_cli
