#!/usr/bin/env bash
# Installs mat_fast and what its tests need into the current Python, without pulling GBs of
# CUDA wheels on machines that have no GPU: torch is installed only if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"
