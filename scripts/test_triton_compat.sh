#!/usr/bin/env bash
# The CPU suite's fast part again under the GPU box's pair: torch 2.11 + Triton 3.6 (CI's
# main run has torch 2.13 + Triton 3.9). A venv of its own that installs everything it needs
# (no --system-site-packages: the main environment may itself be a venv), kept between runs.
#   bash scripts/test_triton_compat.sh -q            # torch 2.11.0, Triton 3.6.0
#   TORCH_COMPAT_VERSION=2.10.0 TRITON_COMPAT_VERSION=3.5.0 bash scripts/test_triton_compat.sh
#
# torch's CPU wheels live on download.pytorch.org, which this project's machines cannot reach;
# PyPI has only the CUDA build (+cu130: the torch wheel ~530 MB plus ~3.5 GB of nvidia-*
# wheels, 4.6 GB installed, ~4.5 min to install once on the 2-core box, then cached). It runs
# on CPU like the CPU wheel (torch.cuda.is_available() is False) and is exactly the GPU box's
# build. TORCH_COMPAT_INDEX=https://download.pytorch.org/whl/cpu takes the CPU wheel instead
# where that index is reachable.
#
# The subset (why): every Triton op test (interpreter parity + the sm_90 compiles with their
# register/stack checks: the kernels the GPU box will run, under its Triton), the ops'
# reference and native-CPU tests, backend selection, model construction, checkpoints and
# torch.compile: the code paths whose behaviour depends on torch's version. Skipped: the
# slow whole-network/nvcc tests and the CLI/packaging/inpainter suites (pure Python over the
# same ops, ~6 more minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_COMPAT_VERSION:-2.11.0}"
TRITON_VERSION="${TRITON_COMPAT_VERSION:-3.6.0}"
VENV="${TRITON_COMPAT_VENV:-${TMPDIR:-/tmp}/mat_fast_torch${TORCH_VERSION}_triton${TRITON_VERSION}}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
index=()
if [ -n "${TORCH_COMPAT_INDEX:-}" ]; then
    index=(--extra-index-url "$TORCH_COMPAT_INDEX")
fi
# The pinned pair and the project's runtime and test dependencies (pyproject.toml).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${index[@]}" \
    "torch==${TORCH_VERSION}" "triton==${TRITON_VERSION}" \
    "numpy>=1.23" "pillow>=9.0" "safetensors>=0.4" "tqdm>=4.60" ninja "pytest>=7" "setuptools>=70.1"
found="$("$VENV/bin/python" -c 'import torch, triton; print(torch.__version__.split("+")[0], triton.__version__)')"
if [ "$found" != "$TORCH_VERSION $TRITON_VERSION" ]; then
    echo "test_triton_compat: the venv imports torch/Triton $found, not $TORCH_VERSION $TRITON_VERSION" >&2
    exit 1
fi
echo "torch/Triton $found (venv $VENV): the fast CPU subset"
# PYTHONPATH: this tree, not whatever mat_fast the venv might hold. A cache of its own for
# the native extension: it is built against this torch.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
    MAT_FAST_CACHE="${MAT_FAST_COMPAT_CACHE:-$VENV/mat_fast_cache}" \
    exec "$VENV/bin/python" -m pytest -p no:cacheprovider -m "not slow" \
    tests/test_window_attention_triton.py tests/test_window_attention_qkv.py \
    tests/test_partial_conv_triton.py tests/test_partial_conv_triton_graph.py \
    tests/test_bias_act_triton.py tests/test_sm90_resources.py tests/test_reference_ops.py \
    tests/test_native_ops.py tests/test_backend.py tests/test_model.py tests/test_checkpoints.py \
    tests/test_compile.py tests/test_benchmark_results.py "$@"
