"""What turns a model into answers: sequences, the continuous-batching scheduler (the one
generation loop), sampling, stop strings, and the threads that feed it.

    sched = Scheduler(model, tokenizer, n_parallel=4)     # KV cache for 4 sequences
    done = [sched.submit(Request(ids, max_tokens=32)) for ids in prompts]
    sched.run_all()                                       # decode them together
    Completion(sched, sched.new_sequence(Request(ids)))   # one, streamed from this thread
    Engine(sched).submit(Request(ids))                    # from any thread (servers)
"""

from .completion import Completion
from .engine import Engine, EngineClosedError, Event, Handle
from .sampling import Sampler, SamplingParams
from .scheduler import ContextSizeError, QueueFullError, Scheduler
from .sequence import (FINISH_REASONS, STOP_REASONS, Piece, Request, Sequence, Timings, TokenLogprob,
                       finish_reason)
from .stops import StopMatcher


def generate_ids(model, prompt_ids, max_tokens: int, sampler=None, stop_ids=()) -> list[int]:
    """Token ids continuing prompt_ids from an empty context, greedy unless `sampler(logits) -> id`
    is given; no tokenizer: ends on `stop_ids` (not returned) or after max_tokens."""
    sched = Scheduler(model)
    request = Request(list(prompt_ids), max_tokens=max_tokens, params=SamplingParams(temp=0.0),
                      stop_ids=frozenset(stop_ids), sampler=sampler)
    seq = sched.submit(request)
    sched.run_until(seq)
    return seq.tokens


__all__ = ["Completion", "ContextSizeError", "Engine", "EngineClosedError", "Event", "FINISH_REASONS", "Handle",
           "Piece", "QueueFullError", "Request", "STOP_REASONS", "Sampler", "SamplingParams", "Scheduler", "Sequence",
           "StopMatcher", "Timings", "TokenLogprob", "finish_reason", "generate_ids"]
