#!/usr/bin/env bash
# Fashion-MNIST (issue 16): the paper's three claims on real 28x28 images, 3 seeds each, plus one MNIST joint run.
# Every training run is sized for about 30 minutes on 2 CPU cores in bf16 (docs/training.md, "Fashion-MNIST and
# MNIST"): 19 runs, about 10 hours in all, each followed by examples/evaluate.py on its folder (a few minutes).
# The data first (offline, docs/datasets.md): scripts/prepare_fashion_mnist.py and scripts/prepare_mnist.py.
# Usage: bash docs/reproduce_fashion_mnist.sh [RUNS_DIR] [FASHION_MNIST_DIR] [MNIST_DIR]
#   defaults: lzn-fashion-results, /work/datasets/fashion-mnist, /work/datasets/mnist
# Each run is evaluated as soon as it has trained (examples/evaluate.py, a few minutes), so results land one by one;
# a finished step (its metrics.json / eval_metrics.json exists) is skipped: re-run the script after an interruption.
# RUNS="gen-lzn-0 gen-rf-0" limits it to those runs (e.g. two lanes side by side, each with OMP_NUM_THREADS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-lzn-fashion-results}
fashion=${2:-/work/datasets/fashion-mnist}
mnist=${3:-/work/datasets/mnist}
mkdir -p "$runs"

evaluate_flags() {  # the evaluation each kind of run gets: the probe baselines where a probe is the claim
  case $1 in
    joint-*|mnist-joint-*) echo --baselines --supervised_steps 1000 ;;  # the cross-entropy row: same encoder, same budget (1,000 updates at 128)
    rep-*) echo --baselines ;;
  esac
}

train() {  # train SCRIPT RUN_NAME FLAGS...: one training run, then its evaluation, unless already done
  local script=$1 name=$2
  shift 2
  if [ -n "${RUNS:-}" ] && [[ " $RUNS " != *" $name "* ]]; then return; fi
  if [ -f "$runs/$name/metrics.json" ]; then
    echo "skip training $name (done)"
  else
    # --skip_evaluation: examples/evaluate.py below measures everything the scripts' own evaluation would (on 10,000
    # images that evaluation alone takes minutes); samples.png, the curves, metrics.json (timings) are still written
    # --resume_from_checkpoint latest: a run cut short (a session that ended) goes on from its last checkpoint
    python "examples/$script" --mixed_precision bf16 --skip_evaluation --resume_from_checkpoint latest --output_dir "$runs/$name" "$@"
  fi
  # evaluation seed = the run's seed; the pinned probe of lzn_hf.evaluation.probe: the fixed stratified 10,000-image
  # subset of the training split, the official 10,000 test images, standardised features
  if [ -f "$runs/$name/eval_metrics.json" ]; then echo "skip evaluating $name (done)"; return; fi
  # shellcheck disable=SC2046
  python examples/evaluate.py "$runs/$name" $(evaluate_flags "$name")
}

for seed in 0 1 2; do
  data=(--dataset_name "$fashion" --seed "$seed")
  # claim 1: the same RF decoder and recipe with and without the LZN latent
  train train_generation.py "gen-lzn-$seed" --config fashion-mnist-generation "${data[@]}"
  train train_generation.py "gen-rf-$seed" --config fashion-mnist-generation --without_lzn_latent "${data[@]}"
  # claim 3: the joint model, and a class-conditional RF without LZN (same decoder, same recipe)
  train train_joint.py "joint-$seed" --config fashion-mnist-joint "${data[@]}"
  train train_generation.py "cond-rf-$seed" --config fashion-mnist-joint --without_lzn_latent "${data[@]}"
  # claim 2: LZN and the SimCLR baseline: same encoder, views (SimCLR's, flips on) and budget
  train train_representation.py "rep-$seed" --config fashion-mnist-representation "${data[@]}"
  train train_representation.py "simclr-$seed" --config fashion-mnist-representation --objective simclr "${data[@]}"
done
# a second dataset: MNIST, the same preset and recipe
train train_joint.py mnist-joint-0 --config fashion-mnist-joint --dataset_name "$mnist" --seed 0

