"""Shared fixtures: where the test data lives, and running the CLI in-process.

Set up here for every test (and the subprocesses tests start, which inherit the environment):

* The demo model is assembled into `<checkout>/.cache/llmcli/` (git-ignored), never the user's
  `~/.cache`: `LLMCLI_CACHE` is set to it, overriding any value it had.
* Hypothesis profiles: `ci` (the default, what `python -m pytest` and CI run) generates 10,000 cases
  per fuzz target, derandomized so every run tries the same cases, without a deadline and without
  an example database (nothing written outside the temp dirs); `dev` (`--hypothesis-profile=dev`)
  200 cases for a quick look.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
TEST_CACHE = ROOT / ".cache" / "llmcli"
os.environ["LLMCLI_CACHE"] = str(TEST_CACHE)

FUZZ_EXAMPLES = 10_000
_FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=FUZZ_EXAMPLES, **_FUZZ_SETTINGS)
settings.register_profile("dev", max_examples=200, **_FUZZ_SETTINGS)
settings.load_profile("ci")


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


def gguf_with_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of the GGUF `src` at `dst` whose tokenizer.chat_template is `template`."""
    from llmcli.gguf import GGUFReader, GGUFWriter, MetadataValue, ValueType

    with GGUFReader(src) as reader:
        w = GGUFWriter(dst)
        for key, mv in reader.metadata.items():
            w.add(key, MetadataValue(ValueType.STRING, template) if key == "tokenizer.chat_template" else mv)
        w.add_tensor_infos_from(reader.tensors)
        with w.open():
            for t, data in reader.iter_tensors():
                w.write_tensor_data(t.name, data)
    return dst


@pytest.fixture
def activation_mode():
    """`activation_mode("int8" | "float")` sets the engine's activation mode for the test; the mode
    it had comes back afterwards."""
    from llmcli.engine.matmul import get_activations, set_activations

    before = get_activations()
    yield set_activations
    set_activations(before)


@pytest.fixture
def int8_mode(activation_mode):
    """The engine in "int8" activation mode for the test; the mode and the thread count it had
    come back afterwards."""
    from llmcli.engine.matmul import get_threads, set_threads

    threads = get_threads()
    activation_mode("int8")
    yield
    set_threads(threads)


@pytest.fixture
def cli():
    """`res = cli("inspect", path, "--json")` -> res.exit_code, res.stdout, res.stderr."""
    return run_cli
