"""`llmcli batch --ray`: the same jobs on a Ray cluster through Ray Data.

    driver: input lines -> jobs (bad lines: error records at once) -> ray.data.from_items
        -> map_batches(Generator, concurrency=W, num_cpus=C)  each of the W workers loads the model
           once and runs `run_jobs` (continuous batching, -np slots) over each batch it is given,
           with C numba threads (its CPUs)
        -> records streamed back in input order -> the same ResultFile as the local mode

The driver parses the lines itself rather than `read_json`: a bad line must become an error record
with its line number, and a resumed job must skip the ids already in the output, neither of which
`read_json` can do. The records come back to the driver (not `write_json`) so the output is the
local mode's one file, resumable the same way. The model file must be at the same path on every
node (a shared or copied file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Iterator

from ..ray_support import import_ray
from .jobs import BadLine, Job
from .runner import error_record, run_jobs


class Generator:
    """A Ray Data worker: the model loaded once, then each batch of jobs run through its scheduler."""

    def __init__(self, model: str, threads: int, parallel: int, ctx_size: int | None, batch_size: int,
                 load_options: dict | None = None):
        from ..api import load

        self.llm = load(model, threads=threads, parallel=parallel, ctx_size=ctx_size, batch_size=batch_size,
                        **(load_options or {}))

    def __call__(self, batch: dict) -> dict:
        jobs = [Job.from_json(str(text)) for text in batch["job"]]
        records = sorted(run_jobs(self.llm, jobs), key=lambda r: r["line"])
        return {"record": [json.dumps(r, ensure_ascii=False) for r in records]}


class RayJob:
    def __init__(self, model: Path | None, *, address: str | None = None, concurrency: int | None = None,
                 num_cpus: int = 1, parallel: int = 8, ctx_size: int | None = None, batch_size: int = 512,
                 load_options: dict | None = None):
        if model is None:
            from ..demo import demo_model_path

            model = demo_model_path()
        self.model = str(Path(model).resolve())
        self.address, self.concurrency, self.num_cpus = address, concurrency, num_cpus
        self.parallel, self.ctx_size, self.batch_size = parallel, ctx_size, batch_size
        self.load_options = dict(load_options or {})  # api.load's use_mmap, mlock, cache types

    def run(self, jobs: Iterable[Job | BadLine]) -> Iterator[dict]:
        ray = import_ray("data")
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        try:
            items = []
            for job in jobs:
                if isinstance(job, BadLine):
                    yield error_record(job.line, job.id, job.error)
                else:
                    items.append({"job": job.to_json()})
            if items:
                yield from self._generate(ray, items)
        finally:
            if started:
                ray.shutdown()

    def _generate(self, ray, items: list[dict]) -> Iterator[dict]:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # records come back in input order
        context.enable_progress_bars = False  # the command shows its own
        workers = self.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1) // self.num_cpus))
        # batches big enough to keep a worker's slots busy, small enough that every worker gets some
        per_batch = max(1, min(8 * self.parallel, math.ceil(len(items) / workers)))
        records = ray.data.from_items(items).map_batches(
            Generator, fn_constructor_kwargs=dict(model=self.model, threads=self.num_cpus, parallel=self.parallel,
                                                  ctx_size=self.ctx_size, batch_size=self.batch_size,
                                                  load_options=self.load_options),
            batch_size=per_batch, batch_format="numpy", concurrency=workers, num_cpus=self.num_cpus)
        for batch in records.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["record"]:
                yield json.loads(str(text))
