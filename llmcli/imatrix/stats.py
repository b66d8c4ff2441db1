"""Accumulating importance statistics: from activations, and from files merged in (--in-file).

The rules are llama-imatrix's (its IMatrixCollector), so that merging and saving give its files:

* a plain matrix product adds each activation row's squares to its matrix's sums and the number of
  rows to its single count; a stacked 3-D weight multiplied as a whole has one sum vector per
  matrix and still one count;
* an expert product (a MoE `*_exps` tensor) adds to that expert's sums and count only;
* merging a GGUF file adds its raw sums and counts (sizes must agree; a single count spreads to
  every matrix); merging a legacy .dat file, whose values are means times its chunk count, adds
  values * chunk_size and ncall * chunk_size, chunk_size being this run's -c;
* sums are float32 and added in float32, as llama.cpp keeps them; counts are integers;
* the chunk count is the largest count // chunk_size.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInputError
from .file import ImatrixEntry, ImatrixFile


class ImportanceStats:
    """Sums and counts per weight name, datasets, for chunks of `chunk_size` tokens."""

    def __init__(self, chunk_size: int):
        self.chunk_size = int(chunk_size)
        self.entries: dict[str, ImatrixEntry] = {}
        self.datasets: list[str] = []

    # -- from activations ------------------------------------------------------------------------

    def add_rows(self, name: str, rows: np.ndarray) -> None:
        """A plain product of `name` (2-D weight) with activation rows (n_rows, n_cols)."""
        n_cols = rows.shape[1]
        e = self.entries.get(name)
        if e is not None and len(e.counts) > 1 and (e.counts == e.counts[0]).all():
            e.counts = e.counts[:1].copy()      # one count per dense matrix (old merged files)
        if e is None or len(e.sums) == 0:
            e = self.entries[name] = ImatrixEntry(np.zeros(n_cols, np.float32), np.zeros(1, np.int64))
        elif len(e.sums) != n_cols:
            raise BadInputError(f"importance matrix: '{name}' has {len(e.sums)} sums, the model's "
                                f"activations {n_cols} columns")
        e.sums += _column_squares(rows)
        if not np.isfinite(e.sums).all():
            raise BadInputError(f"importance matrix: non-finite values in '{name}' (the model's "
                                f"activations overflow)")
        e.counts += rows.shape[0]

    def add_expert_rows(self, name: str, expert: int, n_expert: int, rows: np.ndarray) -> None:
        """An expert product: rows (n_rows, n_cols) that the router sent to `expert` of `name`."""
        n_cols = rows.shape[1]
        e = self.entries.get(name)
        if e is not None and len(e.counts) == 1 and n_expert > 1:
            e.counts = np.full(n_expert, e.counts[0], np.int64)   # a file with one count: spread it
        if e is None or len(e.sums) == 0:
            e = self.entries[name] = ImatrixEntry(np.zeros(n_cols * n_expert, np.float32),
                                                  np.zeros(n_expert, np.int64))
        elif len(e.sums) != n_cols * n_expert or len(e.counts) != n_expert:
            raise BadInputError(f"importance matrix: '{name}' has {len(e.sums)} sums and "
                                f"{len(e.counts)} counts, the model {n_expert} experts of {n_cols} columns")
        part = e.sums[expert * n_cols:(expert + 1) * n_cols]
        part += _column_squares(rows)
        if not np.isfinite(part).all():
            raise BadInputError(f"importance matrix: non-finite values in '{name}' (the model's "
                                f"activations overflow)")
        e.counts[expert] += rows.shape[0]

    # -- from files --------------------------------------------------------------------------------

    def add_file(self, loaded: ImatrixFile) -> None:
        for name, entry in loaded.entries.items():
            e = self.entries.get(name)
            if loaded.is_legacy:
                if e is None or len(e.sums) == 0:
                    e = self.entries[name] = ImatrixEntry(np.zeros(len(entry.sums), np.float32),
                                                          np.zeros(1, np.int64))
                elif len(e.sums) != len(entry.sums):
                    raise BadInputError(f"{loaded.path}: '{name}' has {len(entry.sums)} values, "
                                        f"earlier input {len(e.sums)}")
                e.sums += entry.sums * np.float32(self.chunk_size)
                e.counts += int(entry.counts[0]) * self.chunk_size
                continue
            if e is None:
                e = self.entries[name] = ImatrixEntry(np.zeros(0, np.float32), np.zeros(0, np.int64))
            if len(e.sums) == 0:
                e.sums = np.zeros(len(entry.sums), np.float32)
            elif len(e.sums) != len(entry.sums):
                raise BadInputError(f"{loaded.path}: '{name}' has {len(entry.sums)} sums, "
                                    f"earlier input {len(e.sums)}")
            if len(e.counts) == 0:
                e.counts = np.zeros(len(entry.counts), np.int64)
            elif len(e.counts) == 1 and len(entry.counts) > 1:
                e.counts = np.full(len(entry.counts), e.counts[0], np.int64)
            elif len(e.counts) != len(entry.counts):
                raise BadInputError(f"{loaded.path}: '{name}' has {len(entry.counts)} counts, "
                                    f"earlier input {len(e.counts)}")
            e.sums += entry.sums
            e.counts += entry.counts
        self.datasets.extend(loaded.datasets)

    # -- totals ----------------------------------------------------------------------------------

    @property
    def chunk_count(self) -> int:
        largest = max((int(e.counts.max()) for e in self.entries.values() if len(e.counts)), default=0)
        return largest // self.chunk_size if self.chunk_size > 0 else 0

    def partial_entries(self) -> list[tuple[str, float]]:
        """Entries some of whose matrices got no rows (experts no token chose): (name, % with data)."""
        out = []
        for name, e in self.entries.items():
            zeros = int((e.counts == 0).sum())
            if len(e.counts) and zeros:
                out.append((name, 100.0 * (len(e.counts) - zeros) / len(e.counts)))
        return sorted(out)


def _column_squares(rows: np.ndarray) -> np.ndarray:
    """Sum over rows of each column's square (float64 inside, float32 out)."""
    rows = np.asarray(rows, np.float32)
    return np.einsum("ij,ij->j", rows, rows, dtype=np.float64).astype(np.float32)
