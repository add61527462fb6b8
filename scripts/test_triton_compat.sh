#!/usr/bin/env bash
# A CPU test subset again under the GPU box's pair: torch 2.11 + Triton 3.6 (CI's main run
# has torch 2.13 + Triton 3.9). A venv of its own that installs everything it needs (no
# --system-site-packages: the main environment may itself be a venv), kept between runs in
# mat_fast's cache folder (mat_fast.settings.cache_root: $MAT_FAST_CACHE/compat/..., else
# $XDG_CACHE_HOME/mat_fast/compat/..., else ~/.cache/mat_fast/compat/...): a second run with
# the same pins skips pip entirely.
#   bash scripts/test_triton_compat.sh -q                       # torch 2.11.0, Triton 3.6.0
#   COMPAT_SUBSET=triton bash scripts/test_triton_compat.sh -q  # the Triton op tests only
#   COMPAT_SUBSET=none bash scripts/test_triton_compat.sh       # install (or check) only
#   COMPAT_TESTS="tests/test_backend.py" bash scripts/test_triton_compat.sh -q
#   TORCH_COMPAT_VERSION=2.10.0 TRITON_COMPAT_VERSION=3.5.0 bash scripts/test_triton_compat.sh
# Further arguments go to pytest. TRITON_COMPAT_VENV names the venv folder instead.
#
# torch's CPU wheels live on download.pytorch.org, which this project's machines cannot reach;
# PyPI has only the CUDA build (+cu130: the torch wheel ~530 MB plus ~3.5 GB of nvidia-*
# wheels, 4.6 GB installed, minutes to install once on the 2-core box, then cached). It runs
# on CPU like the CPU wheel (torch.cuda.is_available() is False) and is exactly the GPU box's
# build. TORCH_COMPAT_INDEX=https://download.pytorch.org/whl/cpu takes the CPU wheel instead
# where that index is reachable.
#
# The subsets (COMPAT_SUBSET; CI's whole budget is 25 min and the main suite takes most):
# - triton: every Triton op test (interpreter parity + the sm_90 compiles with their
#   register and int64-offset checks: the kernels the GPU box will compile, under its Triton)
# - fast (the default): triton, plus the native extension built against torch 2.11's headers
#   and its CPU ops, backend selection, model construction, checkpoint loading (torch.load's
#   weights_only rules move between releases) and the results schema, all with -m "not slow".
#   Left out: the instruction-set variant builds and the CPU-backend generator runs (minutes
#   of extra native builds and forwards on 2 cores), torch.compile's whole-network traces,
#   the reference ops' golden tests and the CLI / serve / metrics / inpainter suites: pure
#   PyTorch or pure Python over ops the subset already covers.
# - none: install (or check) the venv, run nothing.
# COMPAT_TESTS="paths..." runs those instead (with -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_COMPAT_VERSION:-2.11.0}"
TRITON_VERSION="${TRITON_COMPAT_VERSION:-3.6.0}"
SUBSET="${COMPAT_SUBSET:-fast}"

TRITON_TESTS=(tests/ops/test_window_attention.py tests/ops/test_window_attention_triton_graph.py
    tests/ops/test_window_attention_qkv.py tests/ops/test_window_attention_gpu_tiles.py
    tests/ops/test_partial_conv.py tests/ops/test_partial_conv_fused.py
    tests/ops/test_partial_conv_triton_graph.py tests/ops/test_bias_act.py
    tests/ops/test_sm90_resources.py)
FAST_TESTS=("${TRITON_TESTS[@]}" tests/ops/test_ieee_fp32_references.py
    tests/ops/test_window_attention_cpu_kernel.py tests/test_backend.py
    tests/model/test_generator.py tests/test_checkpoints.py tests/test_benchmark_results.py)
FAST_SKIP="not every_cpu_instruction_set_variant and not generator_cpu_backend_matches_reference"
select=()
if [ -n "${COMPAT_TESTS:-}" ]; then
    read -r -a select <<< "$COMPAT_TESTS"
else
    case "$SUBSET" in
        triton) select=("${TRITON_TESTS[@]}") ;;
        fast) select=(-k "$FAST_SKIP" "${FAST_TESTS[@]}") ;;
        none) ;;
        *) echo "test_triton_compat: COMPAT_SUBSET must be triton, fast or none; got '$SUBSET'" >&2
           exit 2 ;;
    esac
fi

if [ -n "${TRITON_COMPAT_VENV:-}" ]; then
    VENV="$TRITON_COMPAT_VENV"
else
    # settings.py is a leaf module: read the cache rule from it without importing torch
    VENV="$("$PY" -c 'import runpy, sys; print(runpy.run_path(sys.argv[1])["cache_root"](sys.argv[2]))' \
        mat_fast/settings.py "compat/torch${TORCH_VERSION}_triton${TRITON_VERSION}")"
fi
index=()
if [ -n "${TORCH_COMPAT_INDEX:-}" ]; then
    index=(--extra-index-url "$TORCH_COMPAT_INDEX")
fi
# The pinned pair and the project's runtime and test dependencies (pyproject.toml).
requirements=("torch==${TORCH_VERSION}" "triton==${TRITON_VERSION}" "numpy>=1.23" "pillow>=9.0"
    "safetensors>=0.4" "tqdm>=4.60" ninja "pytest>=7" "pytest-xdist>=3.5" "pytest-timeout>=2.2"
    "setuptools>=70.1")
stamp="$VENV/mat_fast_requirements.txt"
wanted="$(printf '%s\n' "${index[@]}" "${requirements[@]}")"
t0=$SECONDS
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    echo "test_triton_compat: venv $VENV is installed (pip skipped)"
else
    mkdir -p "$(dirname "$VENV")"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    rm -f "$stamp"  # written only once pip succeeded
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${index[@]}" \
        "${requirements[@]}"
    printf '%s\n' "$wanted" > "$stamp"
fi
found="$("$VENV/bin/python" -c 'import torch, triton; print(torch.__version__.split("+")[0], triton.__version__)')"
if [ "$found" != "$TORCH_VERSION $TRITON_VERSION" ]; then
    echo "test_triton_compat: the venv imports torch/Triton $found, not $TORCH_VERSION $TRITON_VERSION" >&2
    exit 1
fi
echo "test_triton_compat: torch/Triton $found ready in $((SECONDS - t0)) s (venv $VENV)"
if [ ${#select[@]} -eq 0 ]; then
    exit 0
fi
echo "test_triton_compat: tests: ${COMPAT_TESTS:-the $SUBSET subset}"
# PYTHONPATH: this tree, not whatever mat_fast the venv might hold. A cache of its own for
# the native extension: it is built against this torch.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
    MAT_FAST_CACHE="${MAT_FAST_COMPAT_CACHE:-$VENV/mat_fast_cache}" \
    exec "$VENV/bin/python" -m pytest -p no:cacheprovider -n auto --dist worksteal -m "not slow" \
    "${select[@]}" "$@"
