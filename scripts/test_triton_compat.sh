#!/usr/bin/env bash
# The Triton kernels against another Triton release: by default 3.6, what the GPU box
# has (CI's own tests run 3.9). Interpreter parity of every Triton op and the sm_90
# compiles, in a venv that sees this Python's packages and adds only that Triton.
#   bash scripts/test_triton_compat.sh            # Triton 3.6.0
#   TRITON_COMPAT_VERSION=3.5.0 bash scripts/test_triton_compat.sh -x
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VERSION="${TRITON_COMPAT_VERSION:-3.6.0}"
VENV="${TRITON_COMPAT_VENV:-${TMPDIR:-/tmp}/mat_fast_triton_${VERSION}}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "triton==${VERSION}"
found="$("$VENV/bin/python" -c 'import triton; print(triton.__version__)')"
if [ "$found" != "$VERSION" ]; then
    echo "test_triton_compat: the venv imports Triton $found, not $VERSION" >&2
    exit 1
fi
echo "Triton $found (venv $VENV): Triton op tests"
# PYTHONPATH: this tree, not whatever mat_fast the shared packages hold.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m pytest -p no:cacheprovider \
    tests/ops/test_window_attention_triton.py tests/ops/test_window_attention_qkv.py \
    tests/ops/test_partial_conv_triton.py tests/ops/test_partial_conv_triton_graph.py \
    tests/ops/test_bias_act.py "$@"
