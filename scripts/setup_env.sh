#!/usr/bin/env bash
# Installs mat_fast and what its tests need into the current Python. torch is installed
# only if missing, from pip's configured index: on a machine without a GPU install a CPU
# wheel first to skip GBs of CUDA wheels, e.g.
#   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"
# The LPIPS test runs the lpips package's own code as the reference; without its dependencies
# (torchvision's Linux wheels want a CUDA torch), the test stands in for torchvision.
"$PY" -m pip install --quiet --no-deps "lpips==0.1.4"
