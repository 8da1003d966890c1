#!/usr/bin/env bash
# Rebuild the shipped demo bundle and its held-out evaluation report from nothing:
# synthetic training and test sets (different seeds), five-fold training with the small
# backbone, then evaluation on the held-out set, copied into this folder.
#
# Usage: bash model/bundles/demo/reproduce.sh WORK_DIR [all|train|evaluate]
#   train     synthesise the training set and train the bundle into WORK_DIR/bundle
#   evaluate  synthesise the held-out set, evaluate WORK_DIR/bundle, copy both here
# Environment: PARALLEL_FOLDS=N trains N folds side by side (one process each; worth it on
# a GPU host with many cores). TRIAGE_MODEL overrides the command (default triage-model;
# "python3 -m model" where the package is on PYTHONPATH but not installed).
#
# Time: training takes an estimated 4 hours on a 2-core CPU (3 epochs x 5 folds of ~41,000
# slices at the ~46 slices/s measured here). The shipped bundle was trained on one
# NVIDIA H200 with KERAS_BACKEND=jax and PARALLEL_FOLDS=5 (the model code is plain Keras),
# and evaluated with TensorFlow on a CPU; see the manifest and report/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:?usage: reproduce.sh WORK_DIR [all|train|evaluate]}"
step="${2:-all}"
tm=(${TRIAGE_MODEL:-triage-model})
parallel="${PARALLEL_FOLDS:-1}"
mkdir -p "$work"

if [[ "$step" == all || "$step" == train ]]; then
  "${tm[@]}" synth --out "$work/train" --studies 300 --seed 1000 --positive-fraction 0.5 \
    --difficulty easy
  train=("${tm[@]}" train --config "$here/training.yaml" --data "$work/train"
    --labels "$work/train/train.csv" --out "$work/bundle")
  if ((parallel > 1)); then
    # Build the preprocessing cache once, then one process per fold, then assemble.
    "${train[@]}" --cache-only
    pids=()
    for k in $(seq 0 4); do
      "${train[@]}" --fold "$k" --workers 1 > "$work/fold$k.log" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
  fi
  "${train[@]}"
fi

if [[ "$step" == all || "$step" == evaluate ]]; then
  "${tm[@]}" synth --out "$work/test" --studies 60 --seed 2000 --positive-fraction 0.5 \
    --difficulty easy
  "${tm[@]}" evaluate --bundle "$work/bundle" --data "$work/test" \
    --labels "$work/test/train.csv" --out "$work/report"
  # The bundle proper (manifest and weights) plus the fold assignment and training report.
  cp "$work"/bundle/manifest.json "$work"/bundle/fold*_*.weights.h5 \
    "$work"/bundle/folds.json "$work"/bundle/training_report.json "$here/"
  rm -rf "$here/report" && cp -r "$work/report" "$here/report"
  echo "demo bundle written to $here"
fi
