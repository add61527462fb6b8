#!/usr/bin/env bash
# The Triton kernels against another Triton release: by default 3.6, what the GPU box
# has (CI's own tests run 3.9). Interpreter parity of every Triton op and the sm_90
# compiles, in a venv that sees the packages of scripts/setup_env.sh's environment (set up
# first if needed) and adds only that Triton, which comes first on its path.
#   bash scripts/test_triton_compat.sh            # Triton 3.6.0
#   TRITON_COMPAT_VERSION=3.5.0 bash scripts/test_triton_compat.sh -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY="$(bash scripts/setup_env.sh --print-python)"
VERSION="${TRITON_COMPAT_VERSION:-3.6.0}"
VENV="${TRITON_COMPAT_VENV:-${TMPDIR:-/tmp}/mat_fast_triton_${VERSION}}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# The environment's packages (torch, pytest, ...) after the venv's own: a venv made from
# another venv would see only the base Python's packages with --system-site-packages.
base="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
own="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$base')" >"$own/mat_fast_base_env.pth"
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
