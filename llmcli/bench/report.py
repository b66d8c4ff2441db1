"""Render results for people (a rich table like llama-bench's markdown) and machines (json, jsonl,
csv, md)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable

from ..engine.kv_cache import DEFAULT_KV_TYPE
from .results import ALL_FIELDS

FORMATS = ("json", "jsonl", "csv", "md")


def human_size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def human_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def table_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """llama-bench's markdown columns: model, size, params, backend, threads, n_batch, (type_k,
    type_v: as llama-bench, only when a KV cache type is not the default), test, t/s."""
    kv = [k for k in ("type_k", "type_v") if any(r.get(k, DEFAULT_KV_TYPE) != DEFAULT_KV_TYPE for r in rows)]
    header = ["model", "size", "params", "backend", "threads", "n_batch", *kv, "test", "t/s"]
    body = [[r["model_type"], human_size(r["model_size"]), human_params(r["model_n_params"]), r["backends"],
             str(r["n_threads"]), str(r["n_batch"]), *(r[k] for k in kv), r["test"],
             f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"]
            for r in rows]
    return header, body


def to_markdown(rows: list[dict[str, Any]]) -> str:
    header, body = table_rows(rows)
    right = {"size", "params", "threads", "n_batch", "test", "t/s"}
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if h in right else "---" for h in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ALL_FIELDS)
    for r in rows:
        writer.writerow([_csv_value(r[f]) for f in ALL_FIELDS])
    return buf.getvalue()


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "md":
        return to_markdown(rows)
    raise ValueError(fmt)


def load_results(text: str, source: str) -> list[dict[str, Any]]:
    """Read a json (list) or jsonl file written by `llmcli bench` (or llama-bench)."""
    from ..errors import BadInputError

    text = text.strip()
    if not text:
        raise BadInputError(f"{source}: empty, expected bench results (json or jsonl)")
    try:
        data = json.loads(text)
        rows: Iterable = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise BadInputError(f"{source}: not JSON or JSONL bench results ({e})") from None
    rows = list(rows)
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"avg_ts", "n_prompt", "n_gen", "n_threads"} <= set(r):
            raise BadInputError(f"{source}: result #{i} lacks avg_ts/n_prompt/n_gen/n_threads")
    return rows
