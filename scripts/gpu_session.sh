#!/usr/bin/env bash
# The GPU runbook: everything this project checks on a GPU, in ONE call of at most 8 minutes
# (the device window is 15 minutes in all, 10 per command; this leaves time for a rerun).
#
#   bash scripts/gpu_session.sh --commit "$(git rev-parse HEAD)"   # on the GPU box
#   bash scripts/gpu_session.sh --dry-run                          # CPU: the same plan, tiny
#
# Options: --commit SHA (or MAT_FAST_COMMIT; the box gets the tree without .git),
# --out DIR (default $OUT, else ./gpu_out), --total SECONDS (default 470; dry run 150),
# --dry-run, --only "PHASE ..." (a subset, e.g. for a rerun). Phases run in priority order;
# each gets min(its budget, what is left of the total). A phase that runs out is stopped
# with SIGINT (SIGKILL 10 s later): pytest still writes its junit file, and the benchmarks
# write every row to their JSON as it is measured (benchmarks/results_io.py), so nothing an
# earlier row or phase wrote is lost. A phase that fails does not stop the next.
#
# Budget (seconds) on the H200 box (16 cores; torch 2.11 + Triton 3.6; nothing measured yet:
# the figures below are estimates from the 2-core CPU box and are what the first run checks):
#   env            5  nvidia-smi, versions (into session.log)
#   build         75  the native extension, timed: 2 .cu + 3 .cpp translation units, sm_90 only
#                     (TORCH_CUDA_ARCH_LIST=9.0), MAX_JOBS=16. nvcc took ~75 s for both .cu
#                     files on 2 cores; in parallel on 16 the slowest unit bounds it (~30-45 s)
#   tests_kernels 110 pytest -m gpu, inductor excluded, kernel parity first: Triton attention,
#                     qkv, partial conv, bias_act, then the native CUDA ops (~700 parametrised
#                     cases, ~60 Triton compiles: 3 dtypes x (window, shift, packed) x fwd/bwd;
#                     1-2 s each), then whole-generator parity per backend at 128-256 and
#                     CUDA graphs (Inpainter); the extension comes from the build phase's cache
#   tests_compile  45  inductor last and few: 2 op-level reduce-overhead graphs (attention,
#                     partial conv) and the whole 256 generator with the triton backend only
#                     (one inductor compile of ~30-40 s; reference/cuda would add two more)
#   attention      75  benchmarks/attention.py fp16: stage shapes at 512 and 1024 (11 distinct
#                     grid/window/shift), batch 1 and 8, masked (MAT always masks): 22 configs
#                     x 9 implementations (eager, proj, reference, triton, cuda, sdpa and the
#                     three +qkv) ~ 200 do_bench calls of ~0.15 s + 8 Triton compiles (4
#                     window/shift pairs x packed or not); Flex opt-in (one compile per shape)
#   generator     120  benchmarks/generator.py: 512 and 1024, batch 1 and 8, fp32/fp16/bf16,
#                     reference vs triton vs cuda, peak memory: 36 rows; the first size pays
#                     the Triton compiles of every dtype (~45 x 1-2 s); 1024 B8 fp32 reference
#                     ~0.3 s a forward (~8.6 TFLOP at ~30 TFLOP/s, no TF32)
#   precision      35  benchmarks/precision.py on cuda, only if the shared test images were
#                     carried in (./gpu_shared, see the README); 256 and 512 configurations
#   total         465  + packing; --total caps the sum (a phase gets what is left)
#
# $OUT receives at most 8 files, flat (the box returns 8 files of <= 16 MiB, 2 folders deep):
# session.log (all phases' output), session.json (each phase: budget, limit, seconds,
# exit code, status), tests_kernels.xml, tests_compile.xml, attention_<gpu>.json,
# generator_cuda.json, precision_cuda.json. The last step checks that (and every JSON's
# schema) and says so in session.log.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
TOTAL=""
ONLY=""
COMMIT="${MAT_FAST_COMMIT:-}"
OUT_DIR="${OUT:-gpu_out}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --commit) COMMIT="$2"; shift ;;
        --out) OUT_DIR="$2"; shift ;;
        --total) TOTAL="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        *) echo "gpu_session.sh: unknown argument '$1' (--dry-run, --commit SHA, --out DIR, --total S, --only PHASES)" >&2
           exit 2 ;;
    esac
    shift
done
if [ -z "$COMMIT" ]; then
    COMMIT="$(git rev-parse HEAD 2>/dev/null || true)"
fi
if [ -z "$COMMIT" ]; then
    echo "gpu_session.sh: no commit: pass --commit SHA (the box has no .git)" >&2
    exit 2
fi
export MAT_FAST_COMMIT="$COMMIT"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/session.log"
: > "$LOG"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
if [ -d gpu_shared ] && [ -z "${MAT_FAST_SHARED:-}" ]; then
    export MAT_FAST_SHARED="$PWD/gpu_shared"  # the shared test images, carried in
fi

if [ "$DRY_RUN" = 1 ]; then
    # The same phases on CPU with tiny shapes; Triton through its interpreter.
    export TRITON_INTERPRET=1
    TOTAL="${TOTAL:-150}"
    BUDGETS=(env=5 build=40 tests_kernels=30 tests_compile=15 attention=35 generator=12 precision=8)
    CHECK_ARGS=(--strict)
    ATTENTION_ARGS=(--device cpu --resolutions 32 --batches 1 --masks mask --budget 0.01 --interpreted-triton)
    GENERATOR_ARGS=(--device cpu --sizes 128 --batches 1 --dtypes float32 --resolution 128 --backends reference,cpu --budget 0.01)
    PRECISION_ARGS=(--device cpu --configs 256 --dtypes bfloat16)
    BUILD_DEVICE=cpu
else
    export MAT_FAST_CACHE="${MAT_FAST_CACHE:-/tmp/mat_fast_cache}"
    TOTAL="${TOTAL:-470}"
    BUDGETS=(env=5 build=75 tests_kernels=110 tests_compile=45 attention=75 generator=120 precision=35)
    ATTENTION_ARGS=(--resolutions 512,1024 --batches 1,8 --masks mask)
    GENERATOR_ARGS=(--sizes 512,1024 --batches 1,8 --dtypes float32,float16,bfloat16 --backends reference,triton,cuda)
    PRECISION_ARGS=(--device cuda --configs 256,512 --dtypes float16,bfloat16)
    BUILD_DEVICE=cuda
    CHECK_ARGS=()
fi
START=$SECONDS
PHASES_JSON=""

log() { echo "$*" | tee -a "$LOG"; }

budget_of() {  # budget_of NAME: the phase's budget in seconds
    local entry
    for entry in "${BUDGETS[@]}"; do
        if [ "${entry%%=*}" = "$1" ]; then echo "${entry#*=}"; return; fi
    done
    echo 0
}

record() {  # record NAME BUDGET LIMIT SECONDS RC STATUS
    PHASES_JSON="${PHASES_JSON:+$PHASES_JSON,}{\"name\":\"$1\",\"budget_s\":$2,\"limit_s\":$3,\"seconds\":$4,\"rc\":$5,\"status\":\"$6\"}"
    printf '{"commit":"%s","dry_run":%s,"total_s":%s,"elapsed_s":%s,"phases":[%s]}\n' \
        "$COMMIT" "$([ "$DRY_RUN" = 1 ] && echo true || echo false)" "$TOTAL" \
        "$((SECONDS - START))" "$PHASES_JSON" > "$OUT_DIR/session.json"
}

phase() {  # phase NAME COMMAND...: run within min(budget, time left), output into session.log
    local name=$1 budget left limit t0 rc status
    shift
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        return 0
    fi
    budget=$(budget_of "$name")
    left=$((TOTAL - (SECONDS - START) - 5))  # 5 s kept for the final check
    limit=$((budget < left ? budget : left))
    if [ "$limit" -lt 5 ]; then
        log "== $name: skipped, ${left}s of the ${TOTAL}s total left"
        record "$name" "$budget" 0 0 0 "skipped: no time left"
        return 0
    fi
    log "== $name (budget ${budget}s, limit ${limit}s, at $((SECONDS - START))s): $*"
    t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="cut at the ${limit}s limit" ;;
        *) status=failed ;;
    esac
    log "== $name: $status (exit $rc, $((SECONDS - t0))s)"
    record "$name" "$budget" "$limit" "$((SECONDS - t0))" "$rc" "$status"
}

skip_phase() {  # skip_phase NAME REASON
    log "== $1: skipped: $2"
    record "$1" "$(budget_of "$1")" 0 0 0 "skipped: $2"
}

environment() {
    date -u
    echo "commit $COMMIT; dry run $DRY_RUN; MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    else
        echo "no nvidia-smi"
    fi
    "$PY" -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
    if command -v nvcc > /dev/null; then nvcc --version | tail -1; else echo "no nvcc"; fi
    nproc
}

# Kernel parity first (files in this order; pytest keeps the first occurrence of a file),
# then every other gpu-marked test; inductor compiles in a phase of their own, last.
KERNEL_TESTS=(tests/test_gpu_ops.py tests/test_window_attention_triton.py
    tests/test_window_attention_qkv.py tests/test_partial_conv_triton.py
    tests/test_partial_conv_triton_graph.py tests/test_bias_act_triton.py
    tests/test_native_ops.py tests/test_fast_path.py tests/test_inpainter.py tests)
COMPILE_TESTS=(tests/test_window_attention_triton.py::test_gpu_inductor_and_cuda_graphs
    tests/test_partial_conv_triton_graph.py::test_gpu_inductor_and_cuda_graphs
    "tests/test_compile.py::test_generator_compiles_with_inductor_and_matches_eager_gpu[triton]")
PYTEST=("$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider)

log "gpu_session: commit $COMMIT, total ${TOTAL}s, out $OUT_DIR"
phase env environment
phase build "$PY" -c "import time; from mat_fast.ops import native_build as nb; t = time.time(); reason = nb.probe('$BUILD_DEVICE', '$BUILD_DEVICE'); print('native extension for $BUILD_DEVICE:', reason or 'ready', f'({time.time() - t:.1f} s)'); raise SystemExit(1 if reason else 0)"
phase tests_kernels "${PYTEST[@]}" -k "not inductor" --junitxml="$OUT_DIR/tests_kernels.xml" "${KERNEL_TESTS[@]}"
phase tests_compile "${PYTEST[@]}" --junitxml="$OUT_DIR/tests_compile.xml" "${COMPILE_TESTS[@]}"
phase attention "$PY" benchmarks/attention.py "${ATTENTION_ARGS[@]}" --out "$OUT_DIR"
phase generator "$PY" benchmarks/generator.py "${GENERATOR_ARGS[@]}" --out "$OUT_DIR"
if [ -n "${MAT_FAST_SHARED:-}" ] && [ -d "$MAT_FAST_SHARED/data/mat_test_sets" ]; then
    phase precision "$PY" benchmarks/precision.py "${PRECISION_ARGS[@]}" \
        --test-sets "$MAT_FAST_SHARED/data/mat_test_sets" --out "$OUT_DIR"
else
    skip_phase precision "no shared test images (copy ../shared to ./gpu_shared and carry it)"
fi
# Charts are drawn from the JSON afterwards (python -m benchmarks.results_io chart FILE):
# here they would only take up files of the 8.
rm -f "$OUT_DIR"/*.png "$OUT_DIR"/*.tmp
log "== check: $OUT_DIR"
"$PY" scripts/check_session_out.py "$OUT_DIR" --total "$TOTAL" "${CHECK_ARGS[@]}" 2>&1 | tee -a "$LOG"
check=${PIPESTATUS[0]}
log "gpu_session: done in $((SECONDS - START))s"
exit "$check"
