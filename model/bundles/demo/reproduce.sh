#!/usr/bin/env bash
# Rebuild the shipped demo bundle and its held-out evaluation report from nothing:
# synthetic training and test sets (different seeds), five-fold training with the small
# backbone, then evaluation on the held-out set. About an hour on a 2-core CPU.
# Usage: bash model/bundles/demo/reproduce.sh [WORK_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d)}"
echo "working in $work"
triage-model synth --out "$work/train" --studies 60 --seed 1000 --positive-fraction 0.5 --difficulty easy
triage-model synth --out "$work/test" --studies 30 --seed 2000 --positive-fraction 0.5 --difficulty easy
triage-model train --config "$here/training.yaml" --data "$work/train" \
  --labels "$work/train/train.csv" --out "$work/bundle"
triage-model evaluate --bundle "$work/bundle" --data "$work/test" \
  --labels "$work/test/train.csv" --out "$work/report"
# The bundle proper (manifest and weights) plus the fold assignment and training report.
cp "$work"/bundle/manifest.json "$work"/bundle/fold*_*.weights.h5 \
  "$work"/bundle/folds.json "$work"/bundle/training_report.json "$here/"
rm -rf "$here/report" && cp -r "$work/report" "$here/report"
echo "demo bundle written to $here"
