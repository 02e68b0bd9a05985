#!/usr/bin/env bash
# The README's main job end to end, before issue 15 (float32, one thread: commit 3afbe26) and now (float32 and bf16),
# run one after the other on an otherwise idle machine. Usage, from the repository root of a checkout of main:
#   git worktree add --detach ../lzn-before 3afbe26 && bash benchmarks/main_job_end_to_end.sh ../lzn-before
# Prints each run's wall time; each run's metrics.json lands in $OUT (default /tmp/lzn-e2e). About 25 minutes.
set -euo pipefail
before=$(cd "$1" && pwd); now=$(pwd); out=${OUT:-/tmp/lzn-e2e}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
run() {  # name checkout [flags]
  local name=$1 dir=$2; shift 2
  local start; start=$(date +%s.%N)
  (cd "$dir" && PYTHONPATH="$dir/src" accelerate launch examples/train_joint.py --output_dir "$out/$name" "$@" > "$out/$name.log" 2>&1)
  echo "$name: $(python -c "print(round($(date +%s.%N) - $start, 1))") s end to end (load $(cut -d' ' -f1 /proc/loadavg))"
}
mkdir -p "$out"
run now-bf16 "$now" --mixed_precision bf16
run before-fp32 "$before"
run now-fp32 "$now"
