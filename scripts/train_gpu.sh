#!/usr/bin/env bash
# The training campaign on one CUDA GPU within a wall-time budget: projects the training scans once,
# then trains (or resumes) config/train/hyper-vr-gpu.yaml until MINUTES have passed, with a checkpoint
# at the end, and prints the last validation rows. Extra arguments go to `pcic train` (the CPU test
# runs it at a tiny size with --device cpu and small crops).
#
#   scripts/train_gpu.sh MINUTES [RUN_DIR] [pcic train options...]
set -euo pipefail
minutes=${1:?usage: scripts/train_gpu.sh MINUTES [RUN_DIR] [pcic train options...]}
run=${2:-out/train/hyper-vr-gpu}
shift $(( $# >= 2 ? 2 : 1 ))
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-"$root/.venv/bin/python"}
config="$root/config/train/hyper-vr-gpu.yaml"

cd "$root"
if [ -f "$run/last.pt" ]; then
  "$python" -m pcic_ros.experiments.training --resume "$run" --time-limit "$minutes" "$@"
else
  "$python" -m pcic_ros.experiments.training --config "$config" --output "$run" --time-limit "$minutes" "$@"
fi
if [ -f "$run/validation_log.csv" ]; then
  tail -n 6 "$run/validation_log.csv"
fi
