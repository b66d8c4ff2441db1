#!/usr/bin/env bash
# CI benchmark job: install llmcli with the demo model, measure it, and gate on the base branch's numbers.
#
#   scripts/ci_bench.sh OUT.json [BASE.json]
#
# Writes this run's results to OUT.json (llmcli bench -o json). With BASE.json (the base branch's
# OUT.json), compares each test and exits 3 when one is slower than the base by more than
# LLMCLI_BENCH_THRESHOLD percent (default 10: shared CI runners are noisy).
# Knobs: LLMCLI_BENCH_THREADS (default 1,2), LLMCLI_BENCH_REPS (default 5), LLMCLI_BENCH_ARGS (extra args).
set -euo pipefail
out=${1:?usage: scripts/ci_bench.sh OUT.json [BASE.json]}
base=${2:-}
threads=${LLMCLI_BENCH_THREADS:-1,2}
reps=${LLMCLI_BENCH_REPS:-5}
threshold=${LLMCLI_BENCH_THRESHOLD:-10}

cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/llmcli ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e ".[demo]"
fi
model=$(.venv/bin/python -c "from llmcli.demo import demo_model_path; print(demo_model_path())")

# One untimed run compiles the kernels into numba's cache, so compile time stays out of the samples.
.venv/bin/llmcli bench -m "$model" -p 16 -n 4 -r 1 -t 1 -o json > /dev/null

args=(-m "$model" -p 512 -n 128 -t "$threads" -r "$reps" -o json ${LLMCLI_BENCH_ARGS:-})
if [ -n "$base" ] && [ -f "$base" ]; then
  .venv/bin/llmcli bench "${args[@]}" --compare "$base" --threshold "$threshold" > "$out"
else
  .venv/bin/llmcli bench "${args[@]}" > "$out"
fi
.venv/bin/python - "$out" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f"{r['test']:>12} t={r['n_threads']}  {r['avg_ts']:8.2f} ± {r['stddev_ts']:.2f} t/s")
PY
