"""Running jobs through one model's continuous-batching scheduler.

`run_jobs(llm, jobs)` keeps the scheduler's `parallel` slots busy: it tokenizes jobs as slots are
about to free (never the whole input at once), steps the scheduler, and yields each job's record as
soon as it finishes, so records come out in finishing order (the output file restores input order).
A job the model refuses (a prompt longer than the context, a chat template failing on its
messages) yields an error record; the others go on. The local `llmcli batch` and each Ray Data
worker run this same loop.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from ..errors import LlmcliError
from ..generation import Request, finish_reason
from .jobs import BadLine, Job


def error_record(line: int, job_id, error: str) -> dict:
    return {"id": job_id, "line": line, "error": error}


def _request(llm, job: Job) -> Request:
    fields = dict(max_tokens=job.max_tokens, params=job.params, stop=list(job.stop))
    if job.messages is not None:
        return llm.prepare_chat(job.messages).request(**fields)
    return Request(llm.tokenize(job.prompt, add_special=True, parse_special=True), **fields)


def _result(job: Job, seq) -> dict:
    record = {"id": job.id, "line": job.line, "text": seq.text, "tokens": list(seq.tokens),
              "prompt_tokens": len(seq.prompt), "finish_reason": finish_reason(seq.stop_reason),
              "stop_reason": seq.stop_reason, "seed": seq.sampler.seed, "timings": seq.timings.to_dict()}
    if job.metadata is not None:
        record["metadata"] = job.metadata
    return record


def run_jobs(llm, jobs: Iterable[Job | BadLine]) -> Iterator[dict]:
    """Each job's record (a result or an error) as it finishes. Leaving early (an exception, a
    closed generator) cancels the jobs in flight and frees their slots."""
    sched = llm.scheduler
    pending = iter(jobs)
    in_flight: list[tuple[object, Job]] = []
    exhausted = False
    try:
        while True:
            # top up: enough waiting to fill every slot the next step frees
            while not exhausted and len(sched.waiting) < sched.n_parallel:
                job = next(pending, None)
                if job is None:
                    exhausted = True
                elif isinstance(job, BadLine):
                    yield error_record(job.line, job.id, job.error)
                else:
                    try:
                        seq = sched.submit(sched.new_sequence(_request(llm, job)))
                    except LlmcliError as e:
                        yield error_record(job.line, job.id, str(e))
                        continue
                    in_flight.append((seq, job))
            if not in_flight:
                if exhausted:
                    return
                continue
            sched.step()
            finished = [(seq, job) for seq, job in in_flight if seq.done]
            if finished:
                in_flight = [(seq, job) for seq, job in in_flight if not seq.done]
                for seq, job in finished:
                    seq.take_pieces()
                    yield _result(job, seq)
    finally:
        for seq, _ in in_flight:
            sched.cancel(seq, "interrupted")
