"""The lines of a batch input file, read into jobs.

Each non-blank line of IN.jsonl is one job:

    "Once upon a time"                                          a prompt (a JSON string)
    {"prompt": "Once upon a time", "id": "a1", "max_tokens": 32}
    {"messages": [{"role": "user", "content": "Hi!"}], "temperature": 0}

`id` (a string or an integer; default: the line number) names the job's record in the output, so a
rerun can skip it; `metadata` (any JSON) is copied into the record. The other keys, each optional,
override the command line's options for this line (`LINE_OPTIONS`). A line that is not valid JSON,
has an unknown key, a bad value or an id another line already took becomes a `BadLine`: the output
gets an error record naming its line number, and the job goes on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from ..errors import BadInputError, LlmcliError
from ..generation import SamplingParams

# Per-line option -> (where it goes, the type it must have). Sampling fields go to SamplingParams;
# OpenAI's name `temperature` and the command line's `temp` are the same option.
LINE_OPTIONS = {
    "max_tokens": ("max_tokens", int),
    "stop": ("stop", list),
    "temperature": ("temp", float),
    "temp": ("temp", float),
    "top_k": ("top_k", int),
    "top_p": ("top_p", float),
    "min_p": ("min_p", float),
    "repeat_penalty": ("repeat_penalty", float),
    "repeat_last_n": ("repeat_last_n", int),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
}
JOB_KEYS = ("prompt", "messages", "id", "metadata")


@dataclass(frozen=True)
class BatchSettings:
    """The command line's options: what every line gets unless it says otherwise."""

    max_tokens: int = -1
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    chat: bool = False  # a prompt line is one user message, rendered with the chat template


@dataclass(frozen=True)
class Job:
    line: int  # 1-based line number in the input file
    id: str | int
    prompt: str | None  # a prompt, or
    messages: list | None  # a conversation (OpenAI's messages)
    max_tokens: int
    params: SamplingParams
    stop: tuple[str, ...]
    metadata: object = None

    def to_json(self) -> str:
        """The job as one JSON line (Ray ships jobs to workers this way; `from_json` reads it)."""
        return json.dumps({"line": self.line, "id": self.id, "prompt": self.prompt, "messages": self.messages,
                           "max_tokens": self.max_tokens, "params": vars(self.params), "stop": list(self.stop),
                           "metadata": self.metadata}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Job":
        d = json.loads(text)
        return cls(d["line"], d["id"], d["prompt"], d["messages"], d["max_tokens"], SamplingParams(**d["params"]),
                   tuple(d["stop"]), d["metadata"])


@dataclass(frozen=True)
class BadLine:
    line: int
    id: str | int | None
    error: str


def _typed(name: str, value, kind: type):
    """`value` as `kind`, or a BadInputError naming the key."""
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInputError(f"{name} must be an integer, got {json.dumps(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadInputError(f"{name} must be a number, got {json.dumps(value)}")
        return float(value)
    if isinstance(value, str):  # stop: one string or a list of them
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise BadInputError(f"{name} must be a non-empty string or a list of them")
    return tuple(value)


def parse_line(text: str, line: int, settings: BatchSettings) -> Job:
    """One input line as a Job; BadInputError says what is wrong with it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        raise BadInputError(f"expected a prompt string or a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(JOB_KEYS) - set(LINE_OPTIONS))
    if unknown:
        raise BadInputError(f"unknown key {unknown[0]!r} (keys: {', '.join(JOB_KEYS + tuple(LINE_OPTIONS))})")
    job_id = value.get("id", line)
    if isinstance(job_id, bool) or not isinstance(job_id, (str, int)):
        raise BadInputError(f"id must be a string or an integer, got {json.dumps(job_id)}")
    prompt, messages = value.get("prompt"), value.get("messages")
    if (prompt is None) == (messages is None):
        raise BadInputError("give one of prompt or messages")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise BadInputError("prompt must be a non-empty string")
    if messages is not None and (not isinstance(messages, list) or not messages
                                 or not all(isinstance(m, dict) for m in messages)):
        raise BadInputError("messages must be a non-empty list of message objects")
    if prompt is not None and settings.chat:
        prompt, messages = None, [{"role": "user", "content": prompt}]
    options = {LINE_OPTIONS[k][0]: _typed(k, v, LINE_OPTIONS[k][1]) for k, v in value.items() if k in LINE_OPTIONS}
    if "temp" in value and "temperature" in value:
        raise BadInputError("give temperature or temp, not both")
    max_tokens = options.pop("max_tokens", settings.max_tokens)
    if max_tokens < -1:
        raise BadInputError(f"max_tokens must be -1 (no limit) or more, got {max_tokens}")
    stop = options.pop("stop", settings.stop)
    params = replace(settings.params, **options).validate()
    return Job(line, job_id, prompt, messages, max_tokens, params, tuple(stop), value.get("metadata"))


def done_key(job_id, line: int):
    """What marks a line done in the output: its id, or (an error record without one) its line."""
    return job_id if job_id is not None else ("line", line)


def _given_id(text: str, line: int):
    """A bad line's own id when it has a usable one, else its line number."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return line
    job_id = value.get("id", line) if isinstance(value, dict) else line
    return job_id if isinstance(job_id, (str, int)) and not isinstance(job_id, bool) else line


def read_jobs(path: Path, settings: BatchSettings, done: set) -> Iterator[Job | BadLine]:
    """The jobs of the input file in order, skipping blank lines and those whose `done_key` is in
    `done` (already in the output); a line that cannot be a job, or repeats an earlier line's id, is
    a BadLine."""
    seen: dict[str | int, int] = {}
    try:
        handle = open(path, "rb")
    except OSError as e:
        raise BadInputError(f"{path}: cannot read the input file: {e.strerror}") from None
    with handle:
        for line, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
                job = parse_line(text, line, settings)
            except UnicodeDecodeError as e:
                if done_key(line, line) not in done:
                    yield BadLine(line, line, f"not UTF-8 ({e.reason} at byte {e.start})")
                continue
            except LlmcliError as e:
                job_id = _given_id(text, line)
                if job_id in seen:
                    job_id = None
                else:
                    seen[job_id] = line
                if done_key(job_id, line) not in done:
                    yield BadLine(line, job_id, str(e))
                continue
            if job.id in seen:
                if done_key(None, line) not in done:
                    yield BadLine(line, None, f"id {json.dumps(job.id)} is already line {seen[job.id]}'s")
                continue
            seen[job.id] = line
            if job.id not in done:
                yield job
