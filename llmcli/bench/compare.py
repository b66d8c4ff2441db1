"""The regression gate: each test's speed as a ratio to a base run; slower beyond a threshold fails."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError

REGRESSION_EXIT_CODE = 3  # distinct from 1 (bad input) so CI can tell a slowdown from a broken call


def result_key(row: dict[str, Any]) -> tuple:
    """Tests are the same when model file name, test shape, threads and batch size are."""
    return (Path(str(row.get("model_filename", ""))).name, int(row["n_prompt"]), int(row["n_gen"]),
            int(row["n_threads"]), int(row.get("n_batch", 0)))


@dataclass
class Verdict:
    key: tuple
    test: str
    base_ts: float | None
    now_ts: float
    ratio: float | None  # now / base
    status: str  # "faster", "same", "slower", "regression", "new"


def compare(now: list[dict[str, Any]], base: list[dict[str, Any]], threshold_pct: float,
            base_name: str = "BASE") -> list[Verdict]:
    if threshold_pct < 0:
        raise BadInputError(f"--threshold must be >= 0, got {threshold_pct}")
    base_by_key = {result_key(r): r for r in base}
    verdicts = []
    for row in now:
        key = result_key(row)
        label = row.get("test") or f"pp{row['n_prompt']}+tg{row['n_gen']}"
        ref = base_by_key.get(key)
        if ref is None:
            verdicts.append(Verdict(key, label, None, row["avg_ts"], None, "new"))
            continue
        ratio = row["avg_ts"] / ref["avg_ts"] if ref["avg_ts"] > 0 else float("inf")
        change_pct = (ratio - 1.0) * 100.0
        if change_pct < -threshold_pct:
            status = "regression"
        elif change_pct < 0:
            status = "slower"
        elif change_pct > 0:
            status = "faster"
        else:
            status = "same"
        verdicts.append(Verdict(key, label, ref["avg_ts"], row["avg_ts"], ratio, status))
    if all(v.status == "new" for v in verdicts):
        raise BadInputError(f"{base_name}: no test matches this run (same model file name, test, "
                            f"threads and batch size); nothing to compare")
    return verdicts


def has_regression(verdicts: list[Verdict]) -> bool:
    return any(v.status == "regression" for v in verdicts)
