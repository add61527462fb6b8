#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite (CPU; GPU tests skip cleanly), one
# pytest-xdist worker per core (`-n 0` runs in one process; any pytest
# argument can follow, e.g. `-m "not slow"` for the quick run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${PYTHON:-python3}" -m pytest -n auto --dist worksteal "$@"
