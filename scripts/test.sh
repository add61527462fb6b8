#!/usr/bin/env bash
# Sets up .venv with the test extra (scripts/setup_env.sh), then runs the whole suite in it
# (CPU; GPU tests skip cleanly).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY="$(bash scripts/setup_env.sh --print-python)"
exec "$PY" -m pytest "$@"
