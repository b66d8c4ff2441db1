"""Atomic outputs (llmcli/atomic.py): fsync before the rename, and what a killed run leaves behind.

The first tests exercise the module in-process; `test_sigkill_during_*` kill real `llmcli quantize`
and `llmcli convert` processes (`python -m llmcli`, the same entry point) at several points of a run
and check that the target never exists, the input is untouched, and the next run cleans up and
writes the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmcli import atomic
from llmcli.errors import OutputExistsError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


# ---- in-process -------------------------------------------------------------------------------

def test_data_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.bin"
    with atomic.atomic_output(target) as f:
        f.write(b"payload")
        assert not target.exists()
    assert events == (["fsync file", "rename", "fsync directory"] if os.name == "posix"
                      else ["fsync file", "rename"])
    assert target.read_bytes() == b"payload"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_an_error_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic.atomic_output(target) as f:
            f.write(b"half")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        with atomic.atomic_output(target):
            pass
    assert target.read_bytes() == b"keep"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_and_reported_live_ones_kept(tmp_path, capsys):
    target = tmp_path / "model.gguf"
    dead = tmp_path / f".model.gguf.{_dead_pid()}.k1ll3d00.tmp"
    dead.write_bytes(b"partial")
    other_target = tmp_path / f".model.gguf.x.{_dead_pid()}.abcdefgh.tmp"  # another file's temporary
    other_target.write_bytes(b"x")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".model.gguf.{sleeper.pid}.l1ve0000.tmp"
        live.write_bytes(b"being written")
        assert atomic.stale_temporaries(target) == [dead]
        with atomic.atomic_output(target) as f:
            f.write(b"whole")
        assert target.read_bytes() == b"whole"
        assert not dead.exists() and live.exists() and other_target.exists()
        err = capsys.readouterr().err
        assert f"removed {dead}" in err and err.count("\n") == 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_locked_temporary_is_kept_even_when_its_pid_is_unknown(tmp_path):
    """A writer in another pid namespace (a container sharing the directory): its pid means nothing
    here, but it holds the lock, so its file stays. Where the platform has no flock the pid alone
    decides, and the file counts as stale."""
    target = tmp_path / "model.gguf"
    tmp = tmp_path / f".model.gguf.{_dead_pid()}.l0cked00.tmp"
    tmp.write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(tmp)]
        if atomic.fcntl is not None else [sys.executable, "-c", "print('locked', flush=True)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        expected = [] if atomic.fcntl is not None else [tmp]
        assert atomic.stale_temporaries(target) == expected
    finally:
        holder.kill()
        holder.wait()
    assert atomic.stale_temporaries(target) == [tmp]  # the holder died: now it is stale


# ---- real processes, killed -------------------------------------------------------------------

def _sha256_tree(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*{atomic.TEMP_SUFFIX}"))


def _llmcli(*args) -> subprocess.Popen:
    # cwd = the checkout, so `-m llmcli` runs this tree's package
    return subprocess.Popen([sys.executable, "-m", "llmcli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(args, target: Path, written: float | None, final_size: int) -> tuple[str, str]:
    """Start `llmcli ARGS`, SIGKILL it when its temporary file holds `written` x the final size
    (None: before the temporary file exists, i.e. during start-up); return what was seen then and
    what the process had printed on stderr."""
    before = set(_temporaries(target))
    proc = _llmcli(*args)
    deadline = time.monotonic() + 600
    try:
        while True:
            assert time.monotonic() < deadline, "kill point never reached"
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"finished before the kill point {written}: {proc.returncode}\n{err}")
            if written is None:
                time.sleep(0.3)  # imports under way, nothing written yet
                assert set(_temporaries(target)) == before
                seen = "no temporary file yet"
                break
            sizes = [p.stat().st_size for p in set(_temporaries(target)) - before if p.exists()]
            if sizes and max(sizes) >= written * final_size:
                seen = f"temporary file at {max(sizes)} of {final_size} bytes"
                break
            time.sleep(0.002)
        proc.kill()  # SIGKILL on POSIX: no handler, no cleanup
        _, err = proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    if os.name == "posix":
        assert proc.returncode == -9, proc.returncode  # it was killed, it did not finish or fail
    return seen, err


def _check_kills(args, target: Path, inputs: Path, reference: bytes) -> list[str]:
    """Kill `llmcli ARGS` at start-up, as it starts writing, half way and near the end; after each
    kill: no target, input unchanged, exactly one partial file (each run removes the previous
    run's). Then an uninterrupted run removes the last one and writes the reference bytes."""
    before = _sha256_tree(inputs)
    seen, stale = [], []
    for point in (None, 0.0, 0.5, 0.9):
        what, err = _kill_when(args, target, point, len(reference))
        seen.append(what)
        assert not target.exists(), f"a killed run left {target} ({what})"
        assert _sha256_tree(inputs) == before, "the input changed"
        for p in stale:
            assert f"note: removed {p}, a partial output left by an interrupted run" in err, err
        stale = _temporaries(target)
        assert len(stale) == (0 if point is None else 1), stale
    proc = _llmcli(*args)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert target.read_bytes() == reference
    assert _temporaries(target) == []
    assert f"note: removed {stale[0]}, a partial output left by an interrupted run" in err, err
    assert _sha256_tree(inputs) == before
    return seen


def test_sigkill_during_quantize_leaves_no_target_and_the_next_run_cleans_up(tmp_path):
    src = tmp_path / "in" / "kq-f16.gguf"
    src.parent.mkdir()
    shutil.copyfile(DATA / "kq" / "kq-f16.gguf", src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    reference = tmp_path / "reference.gguf"
    args = ["quantize", src, reference, "--type", "Q4_K_M", "--threads", "1"]
    assert _llmcli(*args).wait(timeout=900) == 0
    target = out_dir / "kq-q4_k_m.gguf"
    seen = _check_kills([*args[:2], target, *args[3:]], target, src.parent, reference.read_bytes())
    print("quantize killed at:", "; ".join(seen))
    assert seen[0] == "no temporary file yet" and all(s.startswith("temporary file at") for s in seen[1:])


def _big_llama_checkpoint(d: Path) -> Path:
    """tests/data/hf/llama's config and tokenizer with 8 layers of width 256 (6.8M parameters,
    27 MB of float32): big enough that converting it takes seconds, so a poll can catch it."""
    from safetensors.numpy import save_file

    d.mkdir()
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(DATA / "hf" / "llama" / name, d / name)
    config = json.loads((DATA / "hf" / "llama" / "config.json").read_text())
    embd, ff, layers, heads, kv_heads, head_dim = 256, 768, 8, 4, 2, 64
    config.update(hidden_size=embd, intermediate_size=ff, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, head_dim=head_dim)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(0)
    n_vocab = config["vocab_size"]

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(n_vocab, embd), "lm_head.weight": w(n_vocab, embd),
               "model.norm.weight": np.ones(embd, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(embd, np.float32),
            p + "post_attention_layernorm.weight": np.ones(embd, np.float32),
            p + "self_attn.q_proj.weight": w(heads * head_dim, embd),
            p + "self_attn.k_proj.weight": w(kv_heads * head_dim, embd),
            p + "self_attn.v_proj.weight": w(kv_heads * head_dim, embd),
            p + "self_attn.o_proj.weight": w(embd, heads * head_dim),
            p + "mlp.gate_proj.weight": w(ff, embd),
            p + "mlp.up_proj.weight": w(ff, embd),
            p + "mlp.down_proj.weight": w(embd, ff),
        })
    save_file(tensors, str(d / "model.safetensors"))
    return d


def test_sigkill_during_convert_leaves_no_target_and_the_next_run_cleans_up(tmp_path):
    hf = _big_llama_checkpoint(tmp_path / "hf")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    reference = tmp_path / "reference.gguf"
    args = ["convert", hf, "-o", reference, "--outtype", "Q4_K_M"]
    assert _llmcli(*args).wait(timeout=900) == 0
    target = out_dir / "big-q4_k_m.gguf"
    seen = _check_kills([*args[:3], target, *args[4:]], target, hf, reference.read_bytes())
    print("convert killed at:", "; ".join(seen))
    assert seen[0] == "no temporary file yet" and all(s.startswith("temporary file at") for s in seen[1:])


def _file_size_limit(n_bytes: int):
    """preexec_fn: writes past n_bytes fail with EFBIG (SIGXFSZ ignored), as a full disk fails with ENOSPC."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return limit


def test_an_output_that_does_not_fit_is_one_line_and_leaves_nothing(tmp_path):
    """The disk filling up mid-write (here: the file-size limit, EFBIG) is an expected failure: one
    line naming the output, exit 1, no partial file; not a traceback."""
    out = tmp_path / "kq-q8_0.gguf"
    proc = subprocess.run([sys.executable, "-m", "llmcli", "quantize", str(DATA / "kq" / "kq-f16.gguf"), str(out),
                           "--type", "Q8_0", "--threads", "1"], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=_file_size_limit(1 << 20), timeout=600)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: cannot write the output: File too large"), lines
    assert list(tmp_path.iterdir()) == []
