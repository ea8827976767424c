#!/usr/bin/env bash
# Create ./.venv and install forgetscale with its test tools.
# torch comes first and pinned: on our CPU machines `torch==2.13.0` is a local CPU
# build; letting another package pull torch in would fetch a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "installed: $(.venv/bin/forgetscale --version) in $(pwd)/.venv"
