#!/usr/bin/env bash
# Sets up .venv with the test extra (scripts/setup_env.sh), then runs the whole suite in it
# (CPU; GPU tests skip cleanly), one pytest-xdist worker per core (`-n 0` runs in one
# process; any pytest argument can follow, e.g. `-m "not slow"` for the quick run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY="$(bash scripts/setup_env.sh --print-python)"
exec "$PY" -m pytest -n auto --dist worksteal --durations=30 "$@"
