"""The quantization quality table (llmcli.evaluation.quality) on recorded figures.

tests/data/quality/demo-figures.json: what `llmcli quantize --json`, `llmcli perplexity
--kl-divergence --json` and `llmcli bench -o json` printed for the README's table (the demo model's
F16 and six types of it, scripts/quant_quality.py --export-test-data), trimmed to what a row reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmcli.evaluation.quality import (QualityRow, best_speeds, bits_per_weight, markdown_table, pareto_front,
                                       sort_rows, table_json)

FIGURES = json.loads((Path(__file__).parent / "data" / "quality" / "demo-figures.json").read_text())
# by hand from the recorded figures: Q4_0 (7.01 bits/weight, mean KLD 1.218), Q4_1 (7.20, 1.045),
# Q4_K_M (7.36, 0.0196), Q8_0 (8.50, 0.0133); Q5_0 (7.38, 0.147) and Q5_1 (7.57, 0.308) are
# beaten by Q4_K_M, smaller and closer (this F16 holds the Q4_K_M model's own weights)
EXPECTED_FRONT = ["Q4_0", "Q4_1", "Q4_K_M", "Q8_0"]


@pytest.fixture
def rows() -> list[QualityRow]:
    base = FIGURES["base"]
    out = [QualityRow.from_figures("F16", base["quantize"], None, base["bench"], ppl=base["ppl"])]
    for name, f in FIGURES["types"].items():
        out.append(QualityRow.from_figures(name, f["quantize"], f["kld"], f["bench"]))
    return out


def test_bits_per_weight_are_what_quantize_reported(rows):
    for row in rows:
        totals = (FIGURES["base"] if row.is_base else FIGURES["types"][row.type])["quantize"]["totals"]
        assert row.bits_per_weight == pytest.approx(totals["bits_per_weight_out"], rel=1e-12)
    assert bits_per_weight(3, 4) == 6.0


def test_rows_carry_the_recorded_figures(rows):
    q = next(r for r in rows if r.type == "Q8_0")
    stats = FIGURES["types"]["Q8_0"]["kld"]["statistics"]
    assert (q.ppl, q.kld_mean, q.kld_99, q.same_top) == (
        stats["perplexity"]["ppl"], stats["kl_divergence"]["mean"], stats["kl_divergence"]["99.0%"],
        stats["token_probability"]["same_top"])
    base = rows[0]
    assert base.is_base and base.kld_mean is None and base.ppl == FIGURES["base"]["ppl"]["ppl"]


def test_best_speeds_take_the_best_sample_of_each_test():
    bench = [{"n_prompt": 128, "n_gen": 0, "samples_ts": [100.0, 150.0]},
             {"n_prompt": 0, "n_gen": 32, "samples_ts": [9.0, 7.5]}]
    assert best_speeds(bench) == {"pp": 150.0, "tg": 9.0}
    assert best_speeds([]) == {}


def test_pareto_front(rows):
    # by bits per weight: a type is on the front when no smaller-or-equal type has a lower-or-equal
    # mean KLD (one of the two strictly); the F16 base (no KLD) is never a candidate
    front = [r.type for r in pareto_front(rows)]
    assert front == EXPECTED_FRONT
    by_size = sorted((r for r in rows if not r.is_base), key=lambda r: r.bits_per_weight)
    best = float("inf")
    for r in by_size:   # the same front found the other way: a running minimum of the KLD
        assert (r.type in front) == (r.kld_mean < best)
        best = min(best, r.kld_mean)


def test_markdown_table_and_json(rows):
    table = markdown_table(rows, "settings line")
    lines = table.splitlines()
    assert lines[0] == "settings line" and lines[2].startswith("| type | size MiB | bits/weight | PPL | mean KLD")
    body = lines[4:]
    assert len(body) == len(rows) and body[0].startswith("| F16 |")
    names = [line.split("|")[1].strip().strip("*") for line in body]
    assert names == [r.type for r in sort_rows(rows)]
    bpw = [float(line.split("|")[3]) for line in body[1:]]
    assert bpw == sorted(bpw)
    for line, name in zip(body, names):
        assert (f"**{name}**" in line) == (name in EXPECTED_FRONT)
    data = table_json(rows, {"ctx": 512})
    assert [r["type"] for r in data["rows"] if r["pareto"]] == [n for n in names if n in EXPECTED_FRONT]
    assert data["rows"][0]["kld_mean"] is None and data["settings"] == {"ctx": 512}
