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
#
# Time: each stage prints its own. Measured for 0.6.0 on the project's 2-core CPU with two
# workers, stage by stage (not in one run): synthesis of the training set 413 s, of the
# validation set 183 s and of the held-out sets 409 s (realistic 205, easy 94, hard 110;
# each identical to the sets the reports were made from); training 5,450 s (preprocessing
# of the 600 series about 12 min, 30 CNN epochs of 103-154 s, encodings and the sequence
# model about 14 min; partly beside other jobs); evaluation 573 s realistic, 362 s easy,
# 314 s hard (the last two partly beside other jobs). About 2 h 10 min in all: over the
# 2-hour budget; fewer CNN epochs are the lever (the kept epoch was 28 of 30).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:?usage: reproduce.sh WORK_DIR [all|train|evaluate]}"
step="${2:-all}"
tm=(${TRIAGE_MODEL:-triage-model})
workers="${WORKERS:-$(nproc)}"
mkdir -p "$work"

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
  # calibrator and thresholds (training.yaml says why; no folds).
  [[ -f "$work/validation/train.csv" ]] || stage synth-validation "${tm[@]}" synth \
    --out "$work/validation" --studies 200 --seed 1300 --positive-fraction 0.5 \
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
      --labels "$data/train.csv" --out "$work/report_$difficulty"
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
