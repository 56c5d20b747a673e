#!/usr/bin/env bash
# docs/PERFORMANCE.md, "Threads on a busy machine" (issue 27): the demo's baseline arm cut to 30 full-length steps
# with the default threads, 1 and 2, under one busy loop per core, ROUNDS times interleaved; then the demo's three
# arms over STEPS full-length steps each, one after another (--jobs 1) and side by side (--jobs 3), without the
# loops. Needs the builtin corpus (`seqwarm demo` prepares it once). Usage: benchmarks/threads_under_load.sh [ROUNDS] [STEPS]
set -euo pipefail
rounds=${1:-2}
steps=${2:-100}
out=$(mktemp -d)
unset OMP_NUM_THREADS  # the default under test reads it as the user's choice
lscpu | grep 'Model name'
python -c "import torch; print('torch', torch.__version__, '- its default threads:', torch.get_num_threads())"
slice="train.max_tokens=122880 eval.every_tokens=null checkpoint.every_steps=1000 log.progress=false"
run() {  # NAME [OVERRIDE]
    python -m seqwarm train demo-baseline $slice "run.dir=$out/$1" --force ${2:-} >"$out/$1.log" 2>&1
    python -c "import json, sys; s = json.load(open(sys.argv[1])); print(f\"{sys.argv[2]}: {s['steps']} steps, {s['wall_s']:.1f} s\")" \
        "$out/$1/summary.json" "$1"
}
loops=()
stop_loops() { for p in "${loops[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_loops EXIT
for _ in $(seq "$(nproc)"); do python -c 'while 1: pass' & loops+=($!); done
sleep 15
for r in $(seq "$rounds"); do
    echo "round $r, load $(cut -d' ' -f1-4 /proc/loadavg), default: $(python -c 'from seqwarm.runtime import default_num_threads as d; print(d())') threads"
    run "r$r-default"
    run "r$r-1" train.num_threads=1
    run "r$r-2" train.num_threads=2
done
stop_loops
sleep 15
tokens=$((steps * 4096))
for jobs in 1 3; do
    start=$(date +%s.%N)
    python -m seqwarm demo --out "$out/demo$jobs" --force --jobs "$jobs" "train.max_tokens=$tokens" \
        "eval.every_tokens=$((tokens / 2))" >"$out/demo$jobs.log" 2>&1
    echo "demo, 3 arms of $steps steps, --jobs $jobs: $(python -c "import time; print(round(time.time() - $start, 1))") s (load $(cut -d' ' -f1 /proc/loadavg))"
done
echo "runs and logs: $out"
