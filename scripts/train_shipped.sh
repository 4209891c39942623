#!/usr/bin/env bash
# Trains the shipped checkpoints: HYPER and HYPER-PC at the four lambdas, every one with
# config/train/shipped.yaml and the same number of steps, all eight at once (on one GPU they share it;
# each is far too small to fill it alone).
#
#   scripts/train_shipped.sh STEPS [DATA] [CACHE] [RUNS]
#
# DATA defaults to ../shared/data, CACHE (the c_proj arrays of `pcic prepare`) to out/cache/c_proj,
# RUNS (one run folder per model and quality) to out/train/shipped. Copying
# RUNS/<model>-q<quality>/model.pt to pcic_ros/checkpoints/<model>-q<quality>.pt (what
# `pcic train --install` does) makes pcic_ros.codec.zoo load it by name.
set -euo pipefail
steps=${1:?usage: scripts/train_shipped.sh STEPS [DATA] [CACHE] [RUNS]}
data=${2:-../shared/data}
cache=${3:-out/cache/c_proj}
runs=${4:-out/train/shipped}
python=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$runs"
"$python" -m pcic_ros.experiments.training_data --data "$data" --cache "$cache"
pids=()
for model in hyper hyper-pc; do
  for quality in 1 2 3 4; do
    run="$runs/$model-q$quality"
    "$python" -m pcic_ros.experiments.training --config "$root/config/train/shipped.yaml" --model "$model" \
      --quality "$quality" --steps "$steps" --data "$data" --cache "$cache" --output "$run" \
      >"$runs/$model-q$quality.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
for model in hyper hyper-pc; do
  for quality in 1 2 3 4; do
    tail -n 1 "$runs/$model-q$quality/train_log.csv" | sed "s/^/$model q$quality: /"
  done
done
exit $status
