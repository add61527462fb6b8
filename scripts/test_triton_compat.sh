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
# The subset (why; CI's whole budget is 25 min and the main suite takes 12-16 of them):
# every Triton op test (interpreter parity + the sm_90 compiles with their register and
# int64-offset checks: the kernels the GPU box will compile, under its Triton), the native
# extension built against torch 2.11's headers and its CPU ops, backend selection, model
# construction, checkpoint loading (torch.load's weights_only rules move between releases)
# and the results schema, all with -m "not slow". Left out: the instruction-set variant
# builds and the CPU-backend generator runs (minutes of extra native builds and 512
# forwards on 2 cores), torch.compile's whole-network traces, the reference ops' golden
# tests and the CLI / packaging / inpainter suites: pure PyTorch or pure Python over ops
# the subset already covers.
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
    -k "not every_cpu_instruction_set_variant and not generator_cpu_backend_matches_reference" \
    tests/test_window_attention_triton.py tests/test_window_attention_qkv.py \
    tests/test_partial_conv_triton.py tests/test_partial_conv_triton_graph.py \
    tests/test_bias_act_triton.py tests/test_sm90_resources.py tests/test_gpu_ops.py \
    tests/test_native_ops.py tests/test_backend.py tests/test_model.py tests/test_checkpoints.py \
    tests/test_benchmark_results.py "$@"
