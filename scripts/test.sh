#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite (CPU; GPU tests skip cleanly).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${PYTHON:-python3}" -m pytest "$@"
