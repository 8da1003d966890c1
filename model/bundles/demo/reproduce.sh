#!/usr/bin/env bash
# Rebuild the shipped demo bundle and its held-out evaluation reports from nothing:
# a synthetic training set and three held-out test sets (each from its own seed, none used
# by any training run), training as training.yaml says, then evaluation, copied here.
#
# Usage: bash model/bundles/demo/reproduce.sh WORK_DIR [all|train|evaluate]
#   train     synthesise the training set and train the bundle into WORK_DIR/bundle
#   evaluate  synthesise the held-out sets, evaluate WORK_DIR/bundle, copy both here
# Environment: TRIAGE_MODEL overrides the command (default
# triage-model; "python3 -m model" where the package is on PYTHONPATH but not installed).
# WORKERS sets the processes that synthesise and preprocess (default: every CPU).
# WORK_DIR needs about 65 GB of disk: the studies (train 17 GB, validation 17, held-out
# realistic 8, easy and hard 4 each) and the preprocessing cache (15 GB).
#
# Time: each stage prints its own, and the last line the whole. Measured for 0.8.0 in one
# run of `reproduce.sh WORK all` on the project's 2-core CPU (two workers; nothing else ran
# beside it but one niced unit test near the start): 6,594 s (110 min) in all, inside the
# project's 2 hours. Synthesis 970 s (training set 341, validation set 309, held-out
# realistic 159, easy 77, hard 84); training 4,804 s (preprocessing of the 800 series 14 min,
# 24 CNN epochs of 118-143 s with the 400-study validation, 56 min, the encodings of 800
# series 7 min and the sequence model with its calibrator 3); evaluation 820 s (realistic
# 400, easy 195, hard 225). An earlier run, whose training encoded through keras predict (1.27 s per
# series against 0.69 now), took 7,216 s. The CNN's training is reproducible on this CPU:
# both runs kept the same epochs (CNN 23, validation loss 0.362; sequence 7) and wrote the
# committed weights byte for byte, and the same reports and predictions (only the bundle
# hash differs: the manifest records when it was made).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:?usage: reproduce.sh WORK_DIR [all|train|evaluate]}"
step="${2:-all}"
tm=(${TRIAGE_MODEL:-triage-model})
workers="${WORKERS:-$(nproc)}"
mkdir -p "$work"
began=$(date +%s)

stage() {  # stage NAME COMMAND...: run it and print how long it took
  local name="$1" start
  shift
  start=$(date +%s)
  "$@"
  echo "stage ${name}: $(($(date +%s) - start)) s" | tee -a "$work/stages.txt"
}

if [[ "$step" == all || "$step" == train ]]; then
  # Realistic difficulty: the generator's default, what the bundle is evaluated on.
  [[ -f "$work/train/train.csv" ]] || stage synth-train "${tm[@]}" synth --out "$work/train" \
    --studies 400 --seed 1100 --positive-fraction 0.5 --difficulty realistic --workers "$workers"
  # A separate validation set, from its own seed, picks the kept epochs and fits the
  # calibrator and thresholds (training.yaml says why; no folds). 400 studies, not 200:
  # the calibrator's two parameters moved with the 200 (0.7.0: slope 0.72).
  [[ -f "$work/validation/train.csv" ]] || stage synth-validation "${tm[@]}" synth \
    --out "$work/validation" --studies 400 --seed 1300 --positive-fraction 0.5 \
    --difficulty realistic --workers "$workers"
  train=("${tm[@]}" train --config "$here/training.yaml" --data "$work/train"
    --labels "$work/train/train.csv" --validation-data "$work/validation"
    --out "$work/bundle" --workers "$workers")
  stage train "${train[@]}"
fi

if [[ "$step" == all || "$step" == evaluate ]]; then
  # Held-out sets: 200 realistic studies (the goal's), 100 easy and 100 hard beside them.
  for spec in "realistic 200 2026" "easy 100 2027" "hard 100 2028"; do
    read -r difficulty studies seed <<< "$spec"
    data="$work/test_$difficulty"
    [[ -f "$data/train.csv" ]] || stage "synth-$difficulty" "${tm[@]}" synth --out "$data" \
      --studies "$studies" --seed "$seed" --positive-fraction 0.5 --difficulty "$difficulty" \
      --workers "$workers"
    stage "evaluate-$difficulty" "${tm[@]}" evaluate --bundle "$work/bundle" --data "$data" \
      --labels "$data/train.csv" --out "$work/report_$difficulty" --workers "$workers"
  done
  # The bundle proper (manifest and weights) plus the training report (and the fold
  # assignment, when training.yaml trains folds rather than with the validation set).
  rm -f "$here"/fold*_*.weights.h5 "$here/folds.json"
  cp "$work"/bundle/manifest.json "$work"/bundle/fold*_*.weights.h5 \
    "$work"/bundle/training_report.json "$here/"
  [[ ! -f "$work/bundle/folds.json" ]] || cp "$work/bundle/folds.json" "$here/"
  rm -rf "$here/report"
  cp -r "$work/report_realistic" "$here/report"
  cp -r "$work/report_easy" "$here/report/easy"
  cp -r "$work/report_hard" "$here/report/hard"
  echo "demo bundle written to $here"
fi
echo "reproduce.sh ${step}: $(($(date +%s) - began)) s in all" | tee -a "$work/stages.txt"
