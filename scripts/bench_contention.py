#!/usr/bin/env python3
"""Speed on an idle and on a busy machine: llmcli against llama.cpp at 1, 2 and default threads.

    python scripts/bench_contention.py [-m MODEL.gguf] [--llama-bench PATH] [--rounds 2] [--budget 1500]

Two phases, idle then loaded. The loaded phase starts a background load of one busy core (a
subprocess spinning in a loop, stopped by this script on every exit path, Ctrl-C included). In
each phase, for every round, it runs `llmcli bench -m M -p 128 -n 64 -o json` at `-t 1`, `-t 2`
and with no `-t` (the default), and `llama-bench` the same, one after the other (interleaved, so
slow drifts of a shared machine hit every configuration alike; the order rotates by one each round). It prints per phase and test the
median tokens/s of each configuration and two ratios: llmcli's default against its own 1-thread
figure, and against llama.cpp's default. `--budget` bounds the whole run in seconds: a run that
would pass it is cut off, and what was measured is reported. `--json FILE` keeps every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LLAMA_BENCH = "/work/scratch/llama/build/bin/llama-bench"
CONFIGS = [("llmcli", "1"), ("llmcli", "2"), ("llmcli", None), ("llama", "1"), ("llama", "2"), ("llama", None)]


def default_model() -> str:
    sys.path.insert(0, str(ROOT))
    from llmcli.demo import demo_model_path  # noqa: E402

    return str(demo_model_path())


def start_busy_core() -> subprocess.Popen:
    """One process spinning on a core at our priority until stopped (its own process group): a
    shell loop, so that scripts which renice other people's Python jobs while they measure (as
    shared machines have) leave the load as it is; `check_priority` reports it if it was reniced anyway."""
    return subprocess.Popen(["sh", "-c", "while :; do :; done"], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def check_priority(proc: subprocess.Popen) -> None:
    """Warn if the load no longer runs at our priority (the loaded figures would understate it)."""
    try:
        mine, its = os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, proc.pid)
    except OSError:
        return
    if its != mine:
        print(f"warning: the background load was reniced to {its} (we run at {mine}): "
              f"the loaded phase had less load than one busy core", file=sys.stderr)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def command(tool: str, threads: str | None, args) -> list[str]:
    if tool == "llmcli":
        cmd = [sys.executable, "-m", "llmcli", "bench", "-m", args.model]
    else:
        cmd = [args.llama_bench, "-m", args.model]
    cmd += ["-p", str(args.n_prompt), "-n", str(args.n_gen), "-r", str(args.repetitions), "-o", "json"]
    if threads is not None:
        cmd += ["-t", threads]
    return cmd


def run_one(cmd: list[str], timeout: float) -> dict[str, float] | None:
    """tokens/s per test ("pp128", "tg64", "tg32@d4096" after a context of 4096) of one bench run;
    None if it failed or ran out of time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        print(f"  timed out after {timeout:.0f} s: {' '.join(cmd)}", file=sys.stderr)
        return None
    finally:
        stop(proc)
    if proc.returncode != 0:
        print(f"  failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}", file=sys.stderr)
        return None
    rows = json.loads(out)
    result = {}
    for r in rows:
        name = f"pp{r['n_prompt']}" if not r["n_gen"] else f"tg{r['n_gen']}"
        name += f"@d{r['n_depth']}" if r.get("n_depth") else ""
        result[name] = float(r["avg_ts"])
        if r.get("threading_layer"):
            result["threading_layer"] = r["threading_layer"]
    return result


def label(tool: str, threads: str | None) -> str:
    return f"{tool} {'-t ' + threads if threads else 'default'}"


def round_order(round_: int) -> list:
    """CONFIGS rotated by one per round (round 1 as listed): no configuration always follows the
    same one (a default run right after a 2-thread run measured ~5-10 % below `-t 1` under load)."""
    shift = (round_ - 1) % len(CONFIGS)
    return CONFIGS[shift:] + CONFIGS[:shift]


def measure(phase: str, args, deadline: float, figures: dict) -> None:
    for round_ in range(1, args.rounds + 1):
        for tool, threads in round_order(round_):
            left = deadline - time.monotonic()
            if left < 10:
                print(f"  budget spent: stopping in the {phase} phase", file=sys.stderr)
                return
            name = label(tool, threads)
            print(f"[{phase} {round_}/{args.rounds}] {name}", file=sys.stderr, flush=True)
            result = run_one(command(tool, threads, args), min(left, args.timeout))
            if result is not None:
                layer = result.pop("threading_layer", None)
                if layer:
                    figures.setdefault("threading_layer", layer)
                for test, ts in result.items():
                    figures.setdefault(phase, {}).setdefault(test, {}).setdefault(name, []).append(ts)
                print("  " + ", ".join(f"{t} {v:.1f} t/s" for t, v in result.items()), file=sys.stderr)


def median(values) -> float | None:
    return statistics.median(values) if values else None


def report(figures: dict) -> str:
    names = [label(t, n) for t, n in CONFIGS]
    header = ["phase", "test"] + names + ["default / own -t 1", "default / llama.cpp default"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for phase in ("idle", "loaded"):
        for test, by_name in sorted(figures.get(phase, {}).items()):
            med = {n: median(by_name.get(n, [])) for n in names}
            cells = [phase, test] + [f"{med[n]:.1f}" if med[n] else "-" for n in names]
            own, mine, theirs = med["llmcli -t 1"], med["llmcli default"], med["llama default"]
            cells.append(f"{mine / own:.2f}x" if mine and own else "-")
            cells.append(f"{mine / theirs:.2f}x" if mine and theirs else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", help="GGUF model (default: the demo model)")
    ap.add_argument("--llama-bench", default=DEFAULT_LLAMA_BENCH, help=f"llama-bench (default {DEFAULT_LLAMA_BENCH})")
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-r", "--repetitions", type=int, default=3, help="repetitions per bench run (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per phase (default 2)")
    ap.add_argument("--budget", type=float, default=1500, help="seconds for the whole run (default 1500)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for one bench run (default 300)")
    ap.add_argument("--phases", default="idle,loaded", help="idle,loaded (default), or one of them")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    args.model = args.model or default_model()
    if not Path(args.llama_bench).is_file():
        print(f"warning: {args.llama_bench} not found: llama.cpp columns stay empty", file=sys.stderr)
    deadline = time.monotonic() + args.budget
    figures: dict = {}
    busy = None
    # SIGTERM ends the script the way Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for phase in args.phases.split(","):
            if phase == "loaded":
                busy = start_busy_core()
                time.sleep(1)
            measure(phase, args, deadline, figures)
            if busy is not None:
                check_priority(busy)
            stop(busy)
            busy = None
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        stop(busy)
    if figures.get("threading_layer"):
        print(f"llmcli threading layer: {figures['threading_layer']}; load: one busy core in the loaded phase; "
              f"median tokens/s of {args.rounds} interleaved round(s), -r {args.repetitions} each")
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
