"""`llmcli batch`: many prompts from a JSONL file through continuous batching, records to a JSONL file.

    jobs.py     the input lines read into jobs (per-line options, ids, bad lines)
    runner.py   one model's scheduler kept full of jobs; a record per job as it finishes
    output.py   the output file: whole lines, fsync'ed, resumable by id, input order at the end
    ray_data.py the same jobs on a Ray cluster through Ray Data (optional extra `llmcli[ray]`)
"""

from .jobs import BadLine, BatchSettings, Job, read_jobs
from .output import ResultFile
from .runner import run_jobs

__all__ = ["BadLine", "BatchSettings", "Job", "ResultFile", "read_jobs", "run_jobs"]
