#!/usr/bin/env bash
# Rebuild the shipped demo bundle and its held-out evaluation reports from nothing:
# a synthetic training set and three held-out test sets (each from its own seed, none used
# by any training run), training as training.yaml says, then evaluation, copied here.
#
# Usage: bash model/bundles/demo/reproduce.sh WORK_DIR [all|train|evaluate]
#   train     synthesise the training set and train the bundle into WORK_DIR/bundle
#   evaluate  synthesise the held-out sets, evaluate WORK_DIR/bundle, copy both here
# Environment: PARALLEL_FOLDS=N trains the folds side by side (one process each; worth it
# on a GPU host with many cores). TRIAGE_MODEL overrides the command (default
# triage-model; "python3 -m model" where the package is on PYTHONPATH but not installed).
# WORKERS sets the processes that synthesise and preprocess (default: every CPU).
#
# Time: each stage prints its own. Measured for 0.5.0 on the project's 2-core CPU with two
# workers: synthesis of the training set 413 s and of the held-out sets 409 s (realistic
# 205, easy 94, hard 110; each identical to the sets the report was made from); training
# 3,140 s (preprocessing with the filling-defect map 520 s, 30 CNN epochs of 50-87 s,
# encodings and the sequence model); evaluation 520 s realistic, 417 s easy, 335 s hard
# (the last two partly beside another job). About 87 minutes in all.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:?usage: reproduce.sh WORK_DIR [all|train|evaluate]}"
step="${2:-all}"
tm=(${TRIAGE_MODEL:-triage-model})
parallel="${PARALLEL_FOLDS:-1}"
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
  train=("${tm[@]}" train --config "$here/training.yaml" --data "$work/train"
    --labels "$work/train/train.csv" --out "$work/bundle" --workers "$workers")
  if ((parallel > 1)); then
    # Build the preprocessing cache once, then one process per fold, then assemble.
    stage preprocess "${train[@]}" --cache-only
    folds=$(python3 -c "import yaml,sys; c=yaml.safe_load(open(sys.argv[1])); \
print(c.get('train_folds') or c.get('folds', 5))" "$here/training.yaml")
    pids=()
    for k in $(seq 0 $((folds - 1))); do
      "${train[@]}" --fold "$k" --workers 1 > "$work/fold$k.log" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
  fi
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
  # The bundle proper (manifest and weights) plus the fold assignment and training report.
  rm -f "$here"/fold*_*.weights.h5
  cp "$work"/bundle/manifest.json "$work"/bundle/fold*_*.weights.h5 \
    "$work"/bundle/folds.json "$work"/bundle/training_report.json "$here/"
  rm -rf "$here/report"
  cp -r "$work/report_realistic" "$here/report"
  cp -r "$work/report_easy" "$here/report/easy"
  cp -r "$work/report_hard" "$here/report/hard"
  echo "demo bundle written to $here"
fi
