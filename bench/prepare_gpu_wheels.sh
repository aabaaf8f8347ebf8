#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh installs on a GPU machine that has no network.
#
#   bash bench/prepare_gpu_wheels.sh            # -> .whl/ in the repository (ignored by git)
#   WHEEL_DIR=/some/dir bash bench/prepare_gpu_wheels.sh
#
# The GPU machine (Python 3.12, x86-64) already has torch, torchvision, timm, numpy, six, tqdm,
# pillow, pluggy, matplotlib and pytest. It lacks cn_clip and these of its needs and ours:
#   cn_clip==1.6.0   pure Python; it pins lmdb==1.3.0, which has no cp312 wheel, so:
#   lmdb==1.8.1      the newest 1.x with a cp312 manylinux wheel (same API)
#   opencc==1.4.2    traditional -> simplified names (manylinux wheel)
#   unidiff==1.0.1   parses patches/ for the in-memory patch hook
#   cn-clip-pokemon  this package (`pip wheel --no-deps`, from the last commit): its entry points
#                    register the default plugins; gpu_check.sh puts the working tree first on the path.
# Wheels are installed there with --no-deps, so cn_clip's lmdb pin does not get in the way.
# Run it again after changing setup.py (entry points, version).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
WHEEL_DIR=${WHEEL_DIR:-"$REPO/.whl"}
PYTHON=${PYTHON:-python3}
if [ -x "$REPO/.venv/bin/python" ]; then
  PYTHON=${PYTHON_FOR_WHEELS:-"$REPO/.venv/bin/python"}
fi

rm -rf "$WHEEL_DIR"
mkdir -p "$WHEEL_DIR"

"$PYTHON" -m pip download \
  --quiet \
  --no-deps \
  --only-binary=:all: \
  --python-version 3.12 \
  --implementation cp \
  --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 \
  --dest "$WHEEL_DIR" \
  cn_clip==1.6.0 \
  lmdb==1.8.1 \
  opencc==1.4.2 \
  unidiff==1.0.1

# This package itself, built from a copy of the last commit, so that the build leaves no build/ or
# egg-info folder in the working tree. Only its metadata matters there (the entry points that
# register the default plugins): gpu_check.sh puts the working tree's code first on the path.
SOURCE_DIR=$(mktemp -d)
trap 'rm -rf "$SOURCE_DIR"' EXIT
git archive --format=tar HEAD | tar -x -C "$SOURCE_DIR"
"$PYTHON" -m pip wheel \
  --quiet \
  --no-deps \
  --wheel-dir "$WHEEL_DIR" \
  "$SOURCE_DIR"

# cn_clip's needs, for the record: those not listed above are already on the GPU machine.
echo "cn_clip requires:"
unzip -p "$WHEEL_DIR"/cn_clip-*.whl '*/METADATA' | grep '^Requires-Dist' | sed 's/^/  /'
echo "wheels in $WHEEL_DIR:"
ls -l "$WHEEL_DIR"
echo "total: $(du -sh "$WHEEL_DIR" | cut -f1)"
