"""The batch output file: one JSON record a line, written so that a killed job can be resumed.

    {"id": ..., "line": 3, "text": "...", "tokens": [...], "prompt_tokens": 12, "finish_reason": "stop",
     "stop_reason": "eos", "seed": 42, "timings": {...}, "metadata": ...}
    {"id": ..., "line": 4, "error": "not valid JSON (Expecting value at column 1)"}

A record is appended as soon as its job finishes, as one `write` of the whole line, then flushed and
fsync'ed: a finished job is on disk before the next one is reported, and a kill can at worst cut
the line being written. Opening an existing output reads the ids already done and drops such a torn
last line (it is written again). When the job ends, records that finished out of input order are
put back in input order (sorted by line) in a temporary file renamed over the output, so the output
is whole at every moment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import atomic_output
from ..errors import BadInputError
from .jobs import done_key


class ResultFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise BadInputError(f"{self.path}: is a directory, expected an output file name")
        parent = self.path.parent
        if not parent.is_dir():
            raise BadInputError(f"{self.path}: directory {parent} does not exist")
        self.done: set = set()
        self.dropped_torn_line = False
        self._lines: list[int] = []  # line of each record, in file order
        if self.path.exists():
            self._resume()
        try:
            self._file = open(self.path, "ab")
        except OSError as e:
            raise BadInputError(f"{self.path}: cannot write the output file: {e.strerror}") from None

    def _resume(self) -> None:
        """Read the records already written; cut a torn last line (a kill while writing it)."""
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise BadInputError(f"{self.path}: cannot read the output file to resume: {e.strerror}") from None
        lines = data.split(b"\n")
        # after the last newline: b"" when the file ends with a whole line. A record and its newline
        # are one write, so a kill mid-write leaves a tail without its newline, whatever it holds.
        tail = lines.pop()
        good = len(data) - len(tail)
        for number, raw in enumerate(lines, 1):
            record = _record(raw)
            if record is None:
                raise BadInputError(f"{self.path}: line {number} is not a batch record: not a file "
                                    f"`llmcli batch` wrote (give another output file)")
            self.done.add(done_key(record["id"], record["line"]))
            self._lines.append(record["line"])
        if good != len(data):
            self.dropped_torn_line = True
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(done_key(record["id"], record["line"]))
        self._lines.append(record["line"])

    @property
    def in_order(self) -> bool:
        return all(a <= b for a, b in zip(self._lines, self._lines[1:]))

    def close(self) -> None:
        """Close the file, putting its records in input order if they finished out of it."""
        self._file.close()
        if self.in_order:
            return
        records = self.path.read_bytes().splitlines(keepends=True)
        records.sort(key=lambda raw: json.loads(raw)["line"])  # stable: equal lines keep their order
        with atomic_output(self.path, force=True) as out:
            out.writelines(records)
        self._lines.sort()


def _record(raw: bytes) -> dict | None:
    """A whole line of the output as a record, or None when it is not one."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or "line" not in record or "id" not in record:
        return None
    return record
