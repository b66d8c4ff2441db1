"""Outputs that appear whole or not at all, even when the process is killed.

Every file llmcli writes goes to a hidden temporary file beside the target,
`.<name>.<pid>.<random>.tmp`, and becomes the target only when complete:

1. the data is written, flushed and `fsync`ed (on disk before it can have the target's name);
2. the temporary file is renamed over the target (`os.replace`, atomic on POSIX and Windows);
3. the directory is `fsync`ed, so the rename itself survives a power cut (POSIX).

An error or Ctrl-C removes the temporary file; a hard kill (SIGKILL, out of memory, power loss)
cannot, and leaves it behind. The next run that writes the same target removes such stale files
and says so on stderr: a temporary file is stale when the process id in its name is no longer
running and no process holds its lock (the writer keeps an exclusive `flock` on it while writing,
where the platform has one). Files of a writer still running are left alone. An existing target is
replaced only when the user said `--force`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import BadInputError, OutputExistsError, OutputWriteError

try:  # POSIX: a lock the kernel drops when its holder dies, however it dies
    import fcntl
except ImportError:  # Windows: the process id alone tells a live writer from a dead one
    fcntl = None

TEMP_SUFFIX = ".tmp"
# Write errors that say the output does not fit, whatever the data: a one-line error, not a bug.
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


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
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX,
                                    dir=path.parent or ".")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            _lock(f.fileno())
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists() and not force:
            raise OutputExistsError(f"{path}: appeared while writing (use --force to overwrite)")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in OUT_OF_SPACE:
            raise OutputWriteError(f"{path}: cannot write the output: {e.strerror} "
                                   f"(the partial file was removed)") from None
        raise


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files of `path` left by writers that are no longer running (killed mid-write)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX))
    stale = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not _writer_alive(int(m.group(1)), Path(entry.path)):
            stale.append(Path(entry.path))
    return sorted(stale)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what `stale_temporaries(path)` finds, with a line on stderr for each (or for each that
    cannot be removed). Returns the files removed."""
    removed = []
    for tmp in stale_temporaries(path):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            print(f"note: {tmp}: partial output of an interrupted run; could not remove it: {e.strerror}",
                  file=sys.stderr)
            continue
        removed.append(tmp)
        print(f"note: removed {tmp}, a partial output left by an interrupted run", file=sys.stderr)
    return removed


def _writer_alive(pid: int, tmp: Path) -> bool:
    if pid == os.getpid():
        return True
    import psutil

    if psutil.pid_exists(pid):
        return True  # (or the id was reused: then the file stays, which is safe)
    if fcntl is None:
        return False
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # locked: a writer in another process-id namespace (a container) is at work
    finally:
        os.close(fd)  # also releases the lock we may have taken
    return False


def _lock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a file system without flock: the pid check remains
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; Windows cannot open a directory for this)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory if str(directory) else ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the data itself is synced
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
