"""Whole quantized files byte-identical to llama-quantize's (file sha256 from tests/data/kq/types)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llmcli.gguf import GGUFReader
from llmcli.quantize import quantize_file
from llmcli.quants.mixes import QuantizeOptions

DATA = Path(__file__).parent / "data"
KQ = DATA / "kq" / "kq-f16.gguf"


def _distinct_records() -> list[Path]:
    """Every successful record, once per distinct output (Q6_K and Q6_K-pure are the same file)."""
    seen, out = set(), []
    for p in sorted((DATA / "kq" / "types").glob("*.json")):
        record = json.loads(p.read_text())
        if record.get("failed") or record["file_sha256"] in seen:
            continue
        seen.add(record["file_sha256"])
        out.append(p)
    return out


RECORDS = _distinct_records()


def test_every_kq_type_is_covered():
    assert len(RECORDS) == 18


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mismatching_tensors(path: Path, record: dict) -> list[str]:
    with GGUFReader(path) as reader:
        return [f"{t.name} ({t.type.name})" for t in reader.tensors
                if hashlib.sha256(reader.tensor_bytes(t).tobytes()).hexdigest() != record["tensors"][t.name]["sha256"]]


@pytest.mark.parametrize("record_path", RECORDS, ids=lambda p: p.stem)
def test_kq_file_is_byte_identical(record_path, tmp_path):
    record = json.loads(record_path.read_text())
    out = tmp_path / f"kq-{record_path.stem}.gguf"
    report = quantize_file(KQ, out, record["type_arg"], QuantizeOptions(pure=record["pure"]), measure=False)
    assert out.stat().st_size == record["file_bytes"] == report.file_bytes_out
    if _sha256(out) != record["file_sha256"]:
        bad = mismatching_tensors(out, record)
        pytest.fail(f"{record_path.stem}: file differs from llama-quantize's; tensors differing: {bad or 'none (header)'}")


def test_each_tensors_mapped_pages_are_released_once_written(tmp_path, monkeypatch):
    """Resident memory does not hold the whole input: a converted tensor's mapped pages are dropped
    slab by slab as its output is written, and every tensor's once it is done (a 7B f16 input
    stayed resident whole: peak RSS 13.6 GB, now ~0.4 GB); the output is the same bytes."""
    from llmcli import quantize
    from llmcli.quantize import run_quantize
    from llmcli.quants.mixes import find_mix

    released = []
    original = GGUFReader.release_pages

    def record(self, t, lo, hi):
        released.append((t.name, lo, hi))
        original(self, t, lo, hi)

    monkeypatch.setattr(GGUFReader, "release_pages", record)
    default_slab = quantize.SLAB_ELEMENTS
    monkeypatch.setattr(quantize, "SLAB_ELEMENTS", 1 << 14)  # several slabs per matrix
    out = tmp_path / "q.gguf"
    with GGUFReader(KQ) as reader:
        assert reader.releases_pages
        report = run_quantize(reader, out, find_mix("Q4_K_M", has_imatrix=False, pure=False), QuantizeOptions(),
                              measure=False)
        sizes = {t.name: t.n_bytes for t in reader.tensors}
    converted = {t.name for t in report.tensors if t.from_type != t.to_type}
    assert converted and len(converted) < len(sizes)
    slabbed = 0
    for name, n in sizes.items():
        mine = [(lo, hi) for who, lo, hi in released if who == name]
        assert mine[-1] == (0, n), name  # the whole tensor, last
        slabs = mine[:-1]
        if name in converted:  # consecutive slabs from 0 to the end, released as they went
            assert slabs[0][0] == 0 and slabs[-1][1] == n and all(a[1] == b[0] for a, b in zip(slabs, slabs[1:]))
            slabbed += len(slabs) > 1
        else:
            assert slabs == [], name
    assert slabbed > 0
    monkeypatch.setattr(quantize, "SLAB_ELEMENTS", default_slab)
    plain = tmp_path / "plain.gguf"
    monkeypatch.setattr(GGUFReader, "release_pages", original)
    quantize_file(KQ, plain, "Q4_K_M", measure=False)
    assert out.read_bytes() == plain.read_bytes()
