#!/usr/bin/env bash
# The GPU check in one command: the predictor on the GPU, per backend, and the daemon's
# end-to-end latency with its worker there. Prints figures; asserts nothing.
#
#   benchmarks/gpu_check.sh [WHEELS_DIR]       run (WHEELS_DIR default: shared/gpu-wheels)
#   benchmarks/gpu_check.sh --download DIR [PY]  fill DIR with the wheels for Python PY
#                                                (default: this one); needs the internet
#
# The GPU machines lent to this project run Python 3.12 (/opt/torch/.venv, with PyTorch
# and JAX): fill the folder with `--download shared/gpu-wheels 3.12` on a machine that
# reaches PyPI, and carry it.
#
# It runs from a checkout on a bare GPU machine that has Python, PyTorch and JAX but not
# this project's other dependencies: those come from WHEELS_DIR, installed offline. Not
# TensorFlow: the worker runs on PyTorch or JAX here (model.backend). Without a GPU it
# falls back to the CPU: JAX, then PyTorch on the demo bundle only, a smaller
# InceptionResNetV2, one latency study.
set -euo pipefail
cd "$(dirname "$0")/.."

# What a machine with PyTorch and JAX lacks for `triage-model predict` and `triage serve`
# (pure-Python wheels, but for h5py, optree, pydantic-core, PyYAML, SQLAlchemy, greenlet,
# pillow and the DICOM codecs). NumPy, SciPy, ml-dtypes, typing-extensions, MarkupSafe,
# Jinja2 and packaging come with PyTorch and JAX. Installed --no-deps: this is the list.
# About 39 MB for CPython 3.11 on x86-64 (pillow, h5py and SQLAlchemy are half of it).
WHEELS=(
  keras absl-py namex h5py optree rich markdown-it-py mdurl pygments packaging
  pydicom pynetdicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls
  highdicom pillow structlog pyyaml pydantic pydantic-core annotated-types
  typing-inspection typing-extensions sqlalchemy greenlet alembic mako markupsafe
  apscheduler tzlocal starlette anyio idna sniffio uvicorn click h11 prometheus-client
)

if [ "${1:-}" = "--download" ]; then
  dir=${2:?usage: benchmarks/gpu_check.sh --download DIR [PYTHON_VERSION]}
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir" \
    ${3:+--python-version "$3"} "${WHEELS[@]}"
  du -sh "$dir"
  exit 0
fi

started=$(date +%s)
wheels=${1:-shared/gpu-wheels}
work=$(mktemp -d /tmp/gpu-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
export PYTHONPATH=$PWD
if ! python3 -c "import keras, pydicom, pynetdicom, highdicom, sqlalchemy, starlette" 2>/dev/null
then
  [ -d "$wheels" ] || { echo "no wheel folder $wheels (fill one with --download)" >&2; exit 2; }
  # Into a folder of the check's own, not the machine's Python (which may be read-only,
  # and is not this check's to change).
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site" \
    --find-links "$wheels" "${WHEELS[@]}"
  export PYTHONPATH=$PWD:$work/site
fi

gpu=$(python3 -c "import jax; print(int(any(d.platform == 'gpu' for d in jax.devices())))" \
  2>/dev/null || echo 0)
if [ "$gpu" = 1 ] || python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
  2>/dev/null; then
  size=386 backends="torch jax" studies=2 device=cuda:0
else
  # The CPU fallback: the same steps, smaller, so that it ends in minutes on a few cores;
  # JAX first (the backend CI tests), PyTorch on the demo bundle where it is installed.
  size=193 backends="jax torch" studies=1 device=cpu
  echo "no GPU: CPU fallback, InceptionResNetV2 at $size (not 386) on the first backend," \
    "$studies study"
fi
python3 -c "import sys; print('python', sys.version.split()[0])"
for b in torch jax; do
  python3 -c "import $b; print('$b', $b.__version__)" 2>/dev/null || echo "$b not installed"
done

# One synthetic 96-slice study, and the production network (untrained: the timings and
# the agreement between precisions do not depend on the weights).
python3 - "$work" "$size" <<'EOF'
import sys
from pathlib import Path
from model.synthetic import StudyParams, generate_study, write_study
out = Path(sys.argv[1])
written = write_study(generate_study(42, StudyParams(n_slices=96, positive=True)), out / "study")
(out / "series").symlink_to(written.axial.paths[0].parent)
EOF
KERAS_BACKEND=jax python3 -m model init-bundle --out "$work/inception" \
  --backbone inception_resnet_v2 --input-size "$size" --num-slices 96 >/dev/null

# The first backend compares the reduced precisions with float32; the second (JAX, which
# compiles each network per precision) is timed in float32 only, to stay within minutes.
compare="bfloat16 float16"
[ "$device" = cpu ] && compare="bfloat16"  # reduced precision is for GPUs
for backend in $backends; do
  python3 -c "import $backend" 2>/dev/null || { echo "$backend: not installed, skipped"; continue; }
  echo "== backend $backend"
  KERAS_BACKEND=$backend python3 benchmarks/gpu_check.py --backend "$backend" \
    --series "$work/series" --bundle model/bundles/demo --compare $compare
  if [ "$device" != cpu ] || [ "$backend" = "${backends%% *}" ]; then
    KERAS_BACKEND=$backend python3 benchmarks/gpu_check.py --backend "$backend" \
      --series "$work/series" --bundle "$work/inception" \
      --compare $([ "$device" = cpu ] || echo "$compare")  # on the CPU, minutes each
  fi
  compare=""
done

backend=${backends%% *}
echo "== end to end: benchmarks/latency.py, worker on $backend, $device"
python3 benchmarks/latency.py --studies "$studies" --backend "$backend" --device "$device"
echo "gpu_check: $(( $(date +%s) - started )) s"
