"""The test matrix: every combination of model, threads, batch size and test (pp, tg, pp+tg)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..engine.kv_cache import DEFAULT_KV_TYPE
from ..errors import BadInputError


@dataclass(frozen=True)
class BenchTest:
    """One measured configuration. `n_prompt` tokens are processed, then `n_gen` generated, after
    `n_depth` tokens already in the KV cache (llama-bench's -d: evaluated before, not timed)."""

    model: str
    n_prompt: int
    n_gen: int
    n_threads: int
    n_batch: int
    n_ctx: int
    # No -t: the engine's default, up to n_threads threads chosen from measured speed (a --compare
    # key like a fixed n_threads: default runs compare with default runs of older results).
    auto_threads: bool = False
    type_k: str = DEFAULT_KV_TYPE  # KV cache element types (llama-bench's -ctk / -ctv)
    type_v: str = DEFAULT_KV_TYPE
    n_depth: int = 0

    @property
    def name(self) -> str:
        """llama-bench's test label: pp512, tg128, pp512+tg128, and " @ d4096" at a depth."""
        if self.n_gen == 0:
            name = f"pp{self.n_prompt}"
        elif self.n_prompt == 0:
            name = f"tg{self.n_gen}"
        else:
            name = f"pp{self.n_prompt}+tg{self.n_gen}"
        return name + (f" @ d{self.n_depth}" if self.n_depth else "")

    @property
    def key(self) -> tuple:
        """What identifies a test across runs, for --compare."""
        return (self.model_name, self.name, self.n_threads, self.n_batch)

    @property
    def model_name(self) -> str:
        from pathlib import Path

        return Path(self.model).name


def parse_int_list(text: str, option: str, minimum: int = 0) -> list[int]:
    """'512,1024' -> [512, 1024]; every item must be an integer >= minimum."""
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            raise BadInputError(f"{option}: '{item}' is not an integer (expected a comma list like 1,2)") from None
        if value < minimum:
            raise BadInputError(f"{option}: {value} is below the minimum {minimum}")
        values.append(value)
    if not values:
        raise BadInputError(f"{option}: empty list")
    return values


def parse_pg(text: str) -> tuple[int, int]:
    """'512,128' -> (512, 128) for -pg."""
    parts = text.split(",")
    if len(parts) != 2:
        raise BadInputError(f"-pg: expected PROMPT,GEN like 512,128, got '{text}'")
    p, g = parse_int_list(text, "-pg", minimum=1)
    return p, g


def expand(models: list[str], prompts: list[int], gens: list[int], pgs: list[tuple[int, int]],
           threads: list[int] | None, batches: list[int], n_ctx: int | None, type_k: str = DEFAULT_KV_TYPE,
           type_v: str = DEFAULT_KV_TYPE, depths: tuple[int, ...] = (0,)) -> list[BenchTest]:
    """Every combination, in llama-bench's order: per model and configuration (depth innermost),
    pp tests, tg tests, pg tests. threads None: the engine's default (`auto_threads`, up to
    `default_threads()`)."""
    auto = threads is None
    if auto:
        from ..engine.matmul import default_threads

        threads = [default_threads()]
    tests = []
    for model, n_threads, n_batch, n_depth in itertools.product(models, threads, batches, depths):
        shapes = [(p, 0) for p in prompts if p > 0] + [(0, g) for g in gens if g > 0] + list(pgs)
        for n_prompt, n_gen in shapes:
            need = n_depth + n_prompt + n_gen
            ctx = n_ctx if n_ctx is not None else need
            if need > ctx:
                raise BadInputError(f"test pp{n_prompt}+tg{n_gen} at depth {n_depth} needs a context of {need} "
                                    f"tokens; --ctx-size is {ctx}")
            tests.append(BenchTest(model, n_prompt, n_gen, n_threads, n_batch, ctx, auto, type_k, type_v, n_depth))
    if not tests:
        raise BadInputError("nothing to measure: every -p and -n is 0 and no -pg was given")
    return tests
