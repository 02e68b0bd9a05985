#!/usr/bin/env bash
# docs/results.md: the paper's three claims at CPU scale on scikit-learn's 8x8 digits, 3 seeds each.
# 15 training runs of 1,500 updates (about 4-10 minutes each on 2 CPU cores), then examples/evaluate.py on each
# run folder (10-40 s each) and docs/make_results.py (tables + docs/images/results*.png).
# Usage: bash docs/reproduce_results.sh [RUNS_DIR]   (default: lzn-results)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-lzn-results}
mkdir -p "$runs"
for seed in 0 1 2; do
  # case study 1: the same RF decoder with and without the LZN latent
  python examples/train_generation.py --config digits-generation --seed "$seed" --output_dir "$runs/gen-lzn-$seed"
  python examples/train_generation.py --config digits-generation --without_lzn_latent --seed "$seed" --output_dir "$runs/gen-rf-$seed"
  # case study 3: the joint model (the README's main job) and a class-conditional RF without LZN
  python examples/train_joint.py --seed "$seed" --output_dir "$runs/joint-$seed"
  python examples/train_generation.py --config digits-joint --without_lzn_latent --seed "$seed" --output_dir "$runs/cond-rf-$seed"
  # case study 2: representation learning (digit-preserving views: no flips, milder crops and jitter)
  python examples/train_representation.py --config digits-representation --crop_min_scale 0.5 --jitter_strength 0.5 \
    --flip_prob 0 --seed "$seed" --output_dir "$runs/rep-$seed"
done
for seed in 0 1 2; do
  for kind in gen-lzn gen-rf cond-rf; do python examples/evaluate.py "$runs/$kind-$seed"; done
  for kind in joint rep; do python examples/evaluate.py "$runs/$kind-$seed" --baselines; done  # evaluation seed = the run's seed
done
python docs/make_results.py "$runs"
