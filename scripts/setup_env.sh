#!/usr/bin/env bash
# Creates (once) and fills a virtual environment for mat_fast: .venv in the repository
# (Debian/Ubuntu's system Python refuses `pip install`), or the one already active
# ($VIRTUAL_ENV), or $MAT_FAST_VENV. Installs torch first (the CPU wheel on machines
# without an NVIDIA GPU, so pip does not fetch GBs of CUDA wheels), then mat_fast with its
# test extra (pytest, triton, ruff).
#
#   bash scripts/setup_env.sh                  # set up (quietly; safe to rerun)
#   bash scripts/setup_env.sh --print-python   # only print the environment's python
#
# Settings (environment variables):
#   PYTHON                 the Python that creates the environment (default python3)
#   MAT_FAST_VENV          where the environment lives (default .venv in the repository)
#   TORCH_SPEC             which torch (default torch==2.13.0)
#   TORCH_CPU_INDEX_URL    where the CPU wheel comes from when pip's own configuration
#                          does not provide one (default https://download.pytorch.org/whl/cpu)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VIRTUAL_ENV:-}" ] && [ -z "${MAT_FAST_VENV:-}" ]; then
    VENV="$VIRTUAL_ENV"
else
    VENV="${MAT_FAST_VENV:-$PWD/.venv}"
fi
PY="$VENV/bin/python"
if [ "${1:-}" = "--print-python" ]; then
    echo "$PY"
    exit 0
fi

if [ ! -x "$PY" ]; then
    echo "setup_env: creating the virtual environment $VENV" >&2
    if ! "${PYTHON:-python3}" -m venv "$VENV"; then
        echo "setup_env: cannot create a virtual environment; on Debian/Ubuntu run" \
            "'sudo apt-get install python3-venv' (or set PYTHON to another Python 3.9+)" >&2
        exit 1
    fi
fi

TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup_env: NVIDIA GPU found: installing $TORCH_SPEC (CUDA wheels)" >&2
        "$PY" -m pip install --quiet "$TORCH_SPEC"
    else
        # No GPU: the CPU wheel. Where pip's configuration already offers one (a local
        # wheel folder or index, as on CI), install from there without asking PyTorch's
        # index; otherwise from TORCH_CPU_INDEX_URL.
        report="$(mktemp)"
        trap 'rm -f "$report"' EXIT
        if "$PY" -m pip install --quiet --dry-run --no-deps --ignore-installed \
            --report "$report" "$TORCH_SPEC" 2>/dev/null && grep -q '%2Bcpu\|+cpu' "$report"; then
            echo "setup_env: no GPU: installing $TORCH_SPEC (CPU wheel from pip's sources)" >&2
            "$PY" -m pip install --quiet "$TORCH_SPEC"
        else
            index="${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
            echo "setup_env: no GPU: installing $TORCH_SPEC (CPU wheel from $index)" >&2
            if ! "$PY" -m pip install --quiet "$TORCH_SPEC" --index-url "$index"; then
                echo "setup_env: could not install the CPU torch wheel from $index; set" \
                    "TORCH_CPU_INDEX_URL to a reachable index, or install torch into $VENV" \
                    "yourself and rerun" >&2
                exit 1
            fi
        fi
    fi
fi
"$PY" -m pip install --quiet -e ".[test]"
# The LPIPS test runs the lpips package's own code as the reference; without its dependencies
# (torchvision's Linux wheels want a CUDA torch), the test stands in for torchvision.
"$PY" -m pip install --quiet --no-deps "lpips==0.1.4"
