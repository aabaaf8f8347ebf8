#!/usr/bin/env bash
# The GPU check in one command: CUDA tests, upstream's unmodified training against our launcher
# (and --use-flash-attention), and the largest ViT-L-14 batch with --grad-checkpointing.
# Under 8 minutes on one H200; --smoke runs the same code with tiny configs on a CPU.
# What each stage does, and every flag: python bench/gpu_check.py --help
#
#   bash bench/gpu_check.sh                 # full check (a GPU machine)
#   bash bench/gpu_check.sh --smoke         # tiny configs, CPU or GPU, < 2 minutes
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --smoke
#
# On a machine without network, the wheels that bench/prepare_gpu_wheels.sh put in .whl/ are
# installed to /tmp/site first, when cn_clip and our other needs are not importable already.
# Results: $OUT/gpu_check.json when OUT is set (else --out), a markdown table on stdout.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import cn_clip, lmdb, opencc, unidiff" 2>/dev/null; then
  if [ -d .whl ]; then
    "$PYTHON" -m pip install \
      -q \
      --no-index \
      --no-deps \
      --no-compile \
      --no-cache-dir \
      --upgrade \
      --target /tmp/site \
      .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check.sh: cn_clip, lmdb, opencc or unidiff is missing and there is no .whl/ folder;" >&2
    echo "  install the package (pip install -e .) or run bench/prepare_gpu_wheels.sh on a machine with network" >&2
    exit 1
  fi
fi

# The working tree's cn_clip_pokemon comes first (the wheel in /tmp/site gives the entry points).
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

exec "$PYTHON" bench/gpu_check.py "$@"
