"""What a quantization type costs: one row per type (size, bits per weight, perplexity, KL divergence
against the full-precision model, tokens/s), the Pareto front, and the table people read.

    rows = [QualityRow.from_figures(type, quantize_json, kld_json, bench_json) ...]
    front = pareto_front(rows)                 # types no other type beats on both size and KLD
    print(markdown_table(rows, settings))

Pure bookkeeping over figures `llmcli quantize --json`, `llmcli perplexity --kl-divergence --json`
and `llmcli bench -o json` print (scripts/quant_quality.py runs them); nothing here loads a model.

Bits per weight are the weight tensors' bits over the parameter count (as llama-quantize reports
them): metadata and alignment padding left out, so types compare on what they store per weight.
The front is over (bits per weight, mean KLD), both lower-is-better: a type is on it when no other
type is at most as large and at most as far from the base, and strictly better in one of the two.
The base model (KLD 0 by definition) is a row of the table but not a candidate of the front.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class QualityRow:
    type: str                   # the quantization TYPE given to `llmcli quantize` (or the base's, e.g. F16)
    file_bytes: int
    tensor_bytes: int           # bytes of tensor data (what bits per weight count)
    n_params: int
    ppl: float
    ppl_unc: float | None
    kld_mean: float | None      # None for the base model itself
    kld_99: float | None        # the 99th percentile of the per-token KL divergence
    same_top: float | None      # fraction of tokens where both models rank the same token first
    pp_tokens_per_s: float | None = None
    tg_tokens_per_s: float | None = None
    is_base: bool = False

    @property
    def bits_per_weight(self) -> float:
        return bits_per_weight(self.tensor_bytes, self.n_params)

    def to_dict(self) -> dict:
        return {**asdict(self), "bits_per_weight": self.bits_per_weight}

    @classmethod
    def from_figures(cls, type_name: str, quantize: dict, kld: dict | None, bench: list[dict] | None = None,
                     ppl: dict | None = None) -> "QualityRow":
        """A row from the JSON the commands print: `quantize` (llmcli quantize --json: its totals),
        `kld` (llmcli perplexity --kl-divergence --json; None for the base), `ppl` (llmcli
        perplexity --json: the base model's own run), `bench` (llmcli bench -o json: a pp and a tg
        test; the best sample of each is kept, the machine being shared)."""
        totals = quantize["totals"]
        if kld is not None:
            stats = kld["statistics"]
            p, k, t = stats["perplexity"], stats["kl_divergence"], stats["token_probability"]
            figures = dict(ppl=p["ppl"], ppl_unc=p["ppl_unc"], kld_mean=k["mean"], kld_99=k["99.0%"],
                           same_top=t["same_top"])
        elif ppl is not None:
            figures = dict(ppl=ppl["ppl"], ppl_unc=ppl["ppl_error"], kld_mean=None, kld_99=None, same_top=None)
        else:
            raise ValueError(f"{type_name}: a row needs KL-divergence figures or (the base) perplexity figures")
        speeds = best_speeds(bench or [])
        return cls(type_name, totals["file_bytes_out"], totals["tensor_bytes_out"], totals["n_parameters"],
                   pp_tokens_per_s=speeds.get("pp"), tg_tokens_per_s=speeds.get("tg"), is_base=kld is None,
                   **figures)


def bits_per_weight(tensor_bytes: int, n_params: int) -> float:
    return 8.0 * tensor_bytes / n_params


def best_speeds(bench: list[dict]) -> dict[str, float]:
    """{"pp": tokens/s, "tg": tokens/s}: the best sample of the bench's prompt and generation tests."""
    speeds: dict[str, float] = {}
    for test in bench:
        kind = "pp" if test["n_prompt"] and not test["n_gen"] else "tg" if test["n_gen"] and not test["n_prompt"] else None
        if kind is not None:
            speeds[kind] = max(speeds.get(kind, 0.0), max(test["samples_ts"]))
    return speeds


def pareto_front(rows: list[QualityRow]) -> list[QualityRow]:
    """The quantized rows no other quantized row dominates on (bits per weight, mean KLD), by size."""
    candidates = [r for r in rows if not r.is_base and r.kld_mean is not None]

    def dominates(a: QualityRow, b: QualityRow) -> bool:
        return (a.bits_per_weight <= b.bits_per_weight and a.kld_mean <= b.kld_mean
                and (a.bits_per_weight < b.bits_per_weight or a.kld_mean < b.kld_mean))

    front = [r for r in candidates if not any(dominates(o, r) for o in candidates if o is not r)]
    return sorted(front, key=lambda r: r.bits_per_weight)


def sort_rows(rows: list[QualityRow]) -> list[QualityRow]:
    """Base first, then by bits per weight (smallest first)."""
    return sorted(rows, key=lambda r: (not r.is_base, r.bits_per_weight, r.type))


def _opt(fmt: str, value) -> str:
    return "—" if value is None else format(value, fmt)


# (header, how a row renders it given the Pareto front): the table's columns, in order
COLUMNS: list[tuple[str, object]] = [
    ("type", lambda r, front: f"**{r.type}**" if r in front else r.type),
    ("size MiB", lambda r, front: f"{r.file_bytes / 2**20:.1f}"),
    ("bits/weight", lambda r, front: f"{r.bits_per_weight:.2f}"),
    ("PPL", lambda r, front: f"{r.ppl:.4f}" + (f" ± {r.ppl_unc:.4f}" if r.ppl_unc is not None else "")),
    ("mean KLD", lambda r, front: _opt(".5f", r.kld_mean)),
    ("99% KLD", lambda r, front: _opt(".4f", r.kld_99)),
    ("same top %", lambda r, front: _opt(".2f", None if r.same_top is None else 100 * r.same_top)),
    ("pp tok/s", lambda r, front: _opt(".1f", r.pp_tokens_per_s)),
    ("tg tok/s", lambda r, front: _opt(".1f", r.tg_tokens_per_s)),
]


def markdown_table(rows: list[QualityRow], settings: str) -> str:
    """The table in Markdown: a line of settings, then one row per type (base first, then by size);
    the types on the Pareto front in bold."""
    front = pareto_front(rows)
    lines = [settings, "", "| " + " | ".join(h for h, _ in COLUMNS) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|"]
    for r in sort_rows(rows):
        lines.append("| " + " | ".join(cell(r, front) for _, cell in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def table_json(rows: list[QualityRow], settings: dict) -> dict:
    front = {r.type for r in pareto_front(rows)}
    return {"settings": settings,
            "rows": [{**r.to_dict(), "pareto": r.type in front} for r in sort_rows(rows)]}
