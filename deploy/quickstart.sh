#!/usr/bin/env bash
# Set up a virtual environment in .venv and run the daemon on the embedded defaults
# (SQLite and the spool under ./var, DICOM port 11112 on 127.0.0.1). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/triage ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e .
fi
exec .venv/bin/triage serve --config config.example.yaml --log-format console "$@"
