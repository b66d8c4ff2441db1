"""Counters for GET /metrics, in Prometheus' text format, named as llama-server names its own
(`llamacpp:` becomes `llmcli:`).

Counters are added to on the event loop when a request ends; the gauges are read from the
scheduler when /metrics is asked (from outside the engine thread: at worst one step stale).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..generation import Timings


@dataclass
class Metrics:
    prompt_tokens: int = 0  # prompt tokens evaluated (a cached prefix is not evaluated again)
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0
    requests: int = 0  # generation requests ended, however they ended

    def add(self, timings: Timings) -> None:
        self.prompt_tokens += timings.prompt_n
        self.prompt_seconds += timings.prompt_ms / 1000.0
        self.predicted_tokens += timings.predicted_n
        self.predicted_seconds += timings.predicted_ms / 1000.0
        self.requests += 1

    def render(self, engine) -> str:
        """The text exposition: counters, throughput and the engine's gauges."""
        scheduler = engine.scheduler
        running = list(scheduler.running)
        deferred = max(engine.n_active - len(running), 0)  # submitted, not yet in a slot
        slots = scheduler.free + [s.slot for s in running if s.slot is not None]
        capacity = scheduler.n_parallel * scheduler.model.n_ctx
        cached = sum(slot.n_past for slot in slots)
        rows = [
            ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", self.prompt_tokens),
            ("prompt_seconds_total", "counter", "Prompt process time.", self.prompt_seconds),
            ("tokens_predicted_total", "counter", "Number of generation tokens processed.", self.predicted_tokens),
            ("tokens_predicted_seconds_total", "counter", "Predict process time.", self.predicted_seconds),
            ("requests_total", "counter", "Generation requests ended.", self.requests),
            ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
             self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0),
            ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.",
             self.predicted_tokens / self.predicted_seconds if self.predicted_seconds else 0.0),
            ("requests_processing", "gauge", "Number of requests processing.", len(running)),
            ("requests_deferred", "gauge", "Number of requests deferred.", deferred),
            ("kv_cache_tokens", "gauge", "KV cache positions holding a token, all slots.", cached),
            ("kv_cache_usage_ratio", "gauge", "KV cache usage: 1 is full.", cached / capacity if capacity else 0.0),
        ]
        lines = []
        for name, kind, help_, value in rows:
            lines += [f"# HELP llmcli:{name} {help_}", f"# TYPE llmcli:{name} {kind}", f"llmcli:{name} {value}"]
        return "\n".join(lines) + "\n"
