"""Outputs that appear whole or not at all.

Every file llmcli writes goes to a hidden temporary file beside the target and is renamed into place
only when complete, so an error or Ctrl-C never leaves a partial output, and an existing file is
replaced only when the user said `--force`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import BadInputError, OutputExistsError


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """Fail early, before any work, when `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory, expected an output file name")
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: already exists (use --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BadInputError(f"{path}: directory {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file to write; it becomes `path` only if the block finishes without error."""
    path = check_output_path(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
        if path.exists() and not force:
            raise OutputExistsError(f"{path}: appeared while writing (use --force to overwrite)")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
