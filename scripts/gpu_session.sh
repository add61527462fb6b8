#!/usr/bin/env bash
# The GPU runbook: everything this project checks on a GPU, in ONE call of at most 8 minutes
# (the device window is 15 minutes in all, 10 per command; this leaves time for a rerun).
#
#   bash scripts/gpu_session.sh --commit "$(git rev-parse HEAD)"   # on the GPU box
#   bash scripts/gpu_session.sh --dry-run                          # CPU: the same plan, tiny
#
# Options: --commit SHA (or MAT_FAST_COMMIT; the box gets the tree without .git),
# --out DIR (default $OUT, else ./gpu_out), --total SECONDS (default 560; dry run 205),
# --dry-run, --only "PHASE ..." (a subset, e.g. for a rerun). Phases run in priority order;
# each gets min(its budget, what is left of the total). A phase that runs out is stopped
# with SIGINT (SIGKILL 10 s later): pytest still writes its junit file, and the benchmarks
# write every row to their JSON as it is measured (benchmarks/results_io.py), so nothing an
# earlier row or phase wrote is lost. A phase that fails does not stop the next.
#
# Budget (seconds) on the H200 box (16 cores; torch 2.11 + Triton 3.6). First measured on
# 2026-12-04 (commit 8c2a3a8; benchmarks/results/gpu_session_2026-12-04/): env took 7 s;
# the build did not finish within 75 s (twice), and every later phase that touched the
# `cuda` backend started it again and was cut too; tests_kernels took 65 s (294 of 299
# passed; the 5 failures, torch.compile of the Triton ops, are fixed since). The other
# figures are estimates from the 2-core CPU box.
#   env            10  nvidia-smi, versions (a python importing torch and Triton: 7 s measured)
#   build         170  the native extension, timed: 2 .cu + 3 .cpp translation units, sm_90 only
#                      (TORCH_CUDA_ARCH_LIST=9.0), MAX_JOBS=nproc, built at once. Measured:
#                      > 75 s (not finished); nvcc took ~75 s for both .cu files on the 2-core
#                      CPU box. If it fails or is cut, the later phases get
#                      MAT_FAST_NO_BUILD=1: the cuda backend is unavailable at once there
#                      (benchmarks skip it, its tests fail saying so) instead of compiling
#                      again in each phase, as in the first session
#   tests_kernels  75  the triton parameters of the 7 op files with Triton kernels, one pytest
#                      per file at once (7 processes), inductor and the CPU-only sm_90 compile
#                      checks excluded. ~500 cases of ms each; the cost is Triton's JIT:
#                      ~40-60 specialisations per file (dtype x window/shift x mask x packed x
#                      fwd/bwd) at ~1 s each, compiled serially within a process, so ~60 s
#   tests_gpu      60  every other gpu-marked test, 3 processes: the native CUDA attention
#                      (~140 cases), whole-generator parity per backend (128-256), CUDA graphs
#                      (Inpainter), precision (if the images came along); the extension is the
#                      build phase's (MAT_FAST_CACHE)
#   train          90  benchmarks/train.py at 512, batch 8 (issue #17's target: >= 3x the
#                      reference's fp32 step): Gmain, Dmain, Dreg per row, the target rows
#                      first (reference fp32, then triton and cuda in bf16, then fp32, then
#                      reference bf16). A row: a trainer (~5 s), each phase warmed up once
#                      (Triton backward compiles on the first triton row, partly cached by
#                      tests_kernels) and timed 3 times (phases of ~0.5-1 s estimated from
#                      the forward: 512 B1 fp32 reference 33 ms measured); ~10-25 s a row
#   tests_compile  25  inductor last and few: 2 op-level reduce-overhead graphs and the 256
#                      generator with the triton backend only (one whole-network inductor
#                      compile, ~30-40 s; reference and cuda would add one each)
#   attention      45  benchmarks/attention.py fp16: stage shapes at 512 and 1024 (11 distinct
#                      grid/window/shift), batch 1 and 8, masked (MAT always masks): 22 configs
#                      x 9 implementations (eager, proj, reference, triton, cuda, sdpa and the 3
#                      '+qkv') ~ 200 do_bench calls of ~0.15 s, + 8 Triton compiles (4 window/
#                      shift pairs x packed or not; cached from the tests when they match);
#                      FlexAttention is opt-in (--flex: one torch.compile per shape, minutes)
#   generator      70  benchmarks/generator.py: 512 and 1024, batch 1 and 8, fp32/fp16/bf16,
#                      reference vs triton vs cuda, peak memory: 36 rows, each written as timed;
#                      512 B1 pays the Triton compiles of every dtype (~45 x ~1 s); the slowest
#                      forward, 1024 B8 fp32 reference, ~8.6 TFLOP at ~30 TFLOP/s (no TF32) ~0.3 s;
#                      cut to 70 s for the train phase: the rows are written as timed, so a cut
#                      keeps the 512 rows (first measured 2026-12-04)
#   precision      15  benchmarks/precision.py on cuda, only if the shared test images were
#                      carried in (./gpu_shared); 256 and 512, fp16 and bf16
#   total         560  of --total 560 (5 s for the final check); a phase gets min(budget, left)
#
# $OUT receives at most 8 files, flat (the box returns 8 files of <= 16 MiB, 2 folders deep):
# session.log (every phase's output), session.json (each phase: budget, limit, seconds, exit
# code, status), tests.xml (junit of all test phases, merged), attention_<gpu>.json,
# train_cuda.json, generator_cuda.json, precision_cuda.json: 7. The last step checks that (and every JSON's
# schema) and says so in session.log.
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--parallel-pytest" ]; then
    # Internal (the test phases): --parallel-pytest DIR NAME "COMMON ARGS" "GROUP" ...: one
    # pytest per group at once (Triton compiles one kernel at a time per process: 16 cores
    # compile 16), each with its junit file and log in DIR.
    dir=$2 name=$3 common=$4
    shift 4
    pids=()
    i=0
    for group in "$@"; do
        i=$((i + 1))
        # eval: the argument strings carry their own quoting (-k expressions, node ids)
        eval "\"\${PYTHON:-python3}\" -m pytest $common --junitxml='$dir/${name}_$i.xml' $group" \
            > "$dir/${name}_$i.log" 2>&1 &
        pids+=($!)
    done
    # A time limit's SIGINT reaches every pytest (timeout signals the process group): wait
    # for them to write their junit files and exit (timeout's SIGKILL ends a stuck one).
    trap ':' INT TERM
    rc=0
    for pid in "${pids[@]}"; do
        while :; do
            wait "$pid"
            status=$?
            kill -0 "$pid" 2> /dev/null || break
        done
        if [ "$status" != 0 ] && [ "$status" != 5 ]; then  # 5: every test deselected
            rc=$status
        fi
    done
    exit "$rc"
fi
if [ "${1:-}" = "--environment" ]; then  # internal: the env phase
    date -u
    echo "MAX_JOBS=${MAX_JOBS:-} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} nproc $(nproc)"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    else
        echo "no nvidia-smi"
    fi
    "${PYTHON:-python3}" -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
    if command -v nvcc > /dev/null; then nvcc --version | tail -1; else echo "no nvcc"; fi
    exit 0
fi

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
if [ "$DRY_RUN" = 1 ] && [ -z "${PYTHON:-}" ]; then
    # on a CPU box the suite's environment has torch; the system python3 may not
    VENV_PY="$(bash scripts/setup_env.sh --print-python)"
    if [ -x "$VENV_PY" ]; then export PYTHON="$VENV_PY"; fi
fi
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d gpu_shared ] && [ -z "${MAT_FAST_SHARED:-}" ]; then
    export MAT_FAST_SHARED="$PWD/gpu_shared"  # the shared test images, carried in
fi

if [ "$DRY_RUN" = 1 ]; then
    # The same phases on CPU with tiny shapes; Triton through its interpreter. The native
    # build is cached by the suite that CI runs first (4 s); tests_gpu collects the whole
    # tree (~35 s on a loaded 2-core box); the generator phase's two rows at 128 take
    # 9 forwards of ~3 s each on a slow 2-core box (35 s in all; at 25 s it was cut with none).
    export TRITON_INTERPRET=1
    TOTAL="${TOTAL:-205}"
    BUDGETS=(env=10 build=20 tests_kernels=25 tests_gpu=30 train=15 tests_compile=15 attention=30 generator=50 precision=8)
    CHECK_ARGS=(--strict)
    ATTENTION_ARGS=(--device cpu --resolutions 32 --batches 1 --masks mask --budget 0.01 --interpreted-triton)
    GENERATOR_ARGS=(--device cpu --sizes 128 --batches 1 --dtypes float32 --resolution 128 --backends reference,cpu --budget 0.01 --min-rounds 2)
    PRECISION_ARGS=(--device cpu --configs 256 --dtypes bfloat16)
    TRAIN_ARGS=(--device cpu --arch tiny --resolutions 64 --batch 2 --rows reference:fp32,cpu:fp32,cpu:bf16 --budget-s 0.01 --min-rounds 2)
    BUILD_DEVICE=cpu
else
    export MAT_FAST_CACHE="${MAT_FAST_CACHE:-/tmp/mat_fast_cache}"
    export MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
    TOTAL="${TOTAL:-560}"
    BUDGETS=(env=10 build=170 tests_kernels=75 tests_gpu=60 train=90 tests_compile=25 attention=45 generator=70 precision=15)
    ATTENTION_ARGS=(--resolutions 512,1024 --batches 1,8 --masks mask)
    GENERATOR_ARGS=(--sizes 512,1024 --batches 1,8 --dtypes float32,float16,bfloat16 --backends reference,triton,cuda)
    PRECISION_ARGS=(--device cuda --configs 256,512 --dtypes float16,bfloat16)
    # #17's target row first (a fast backend in bf16 against the reference's fp32 step)
    TRAIN_ARGS=(--resolutions 512 --batch 8 --budget-s 1 --rows reference:fp32,triton:bf16,cuda:bf16,triton:fp32,cuda:fp32,reference:bf16)
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
    return "$rc"
}

skip_phase() {  # skip_phase NAME REASON
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $1 "* ]]; then
        return 0
    fi
    log "== $1: skipped: $2"
    record "$1" "$(budget_of "$1")" 0 0 0 "skipped: $2"
}

# GPU tests, three phases, each a few pytest processes at once (one per group):
# tests_kernels: the triton parameters (and backend-free tests) of the op files with Triton
#   kernels (they run on CUDA where there is one: kernel parity at small and real shapes,
#   bias_act at real shapes); tests_gpu: every other gpu-marked test (the cuda parameters:
#   native CUDA attention and partial conv; whole-generator parity per backend, CUDA graphs,
#   precision); tests_compile:
#   the inductor compiles, last and few. The sm_90 compile checks are CPU tests: skipped.
JUNIT_DIR="$(mktemp -d)"
# The op test modules take the backend as a parameter (cpu, triton, cuda): the kernel phase
# runs their triton parameters, tests_gpu the cuda ones of the two ops with a CUDA extension.
TRITON_FILES=(tests/ops/test_window_attention.py tests/ops/test_window_attention_triton_graph.py
    tests/ops/test_window_attention_qkv.py tests/ops/test_partial_conv.py
    tests/ops/test_partial_conv_fused.py tests/ops/test_partial_conv_triton_graph.py
    tests/ops/test_bias_act.py)
NATIVE_CUDA_FILES=(tests/ops/test_window_attention.py tests/ops/test_partial_conv.py)
KERNEL_GROUPS=("${TRITON_FILES[@]}")
# a group's own -k comes after COMMON's and replaces it
GPU_GROUPS=("-k 'cuda and not inductor' ${NATIVE_CUDA_FILES[*]}" "tests/model/test_precision.py")
# the third group: every other file (pytest takes each file once)
GPU_GROUPS+=("tests/test_inpainter.py $(printf -- '--ignore=%s ' "${TRITON_FILES[@]}" tests/model/test_precision.py) tests")
COMPILE_GROUPS=("tests/ops/test_window_attention_triton_graph.py::test_gpu_inductor_and_cuda_graphs tests/ops/test_partial_conv_triton_graph.py::test_gpu_inductor_and_cuda_graphs"
    "'tests/model/test_compile.py::test_generator_compiles_with_inductor_and_matches_eager_gpu[triton]'")
COMMON="-q -rfEs -p no:cacheprovider"
if [ "$DRY_RUN" = 1 ]; then
    # On CPU: the Triton files' interpreter tests take minutes (CI runs them anyway), so
    # only the gpu-marked tests are collected (and skip); one process per phase, two cores.
    KERNEL_FILTER="-m gpu"
    KERNEL_GROUPS=("${KERNEL_GROUPS[*]}")
    # every other file once (joining the groups would --ignore the first two groups' files)
    GPU_GROUPS=("$(printf -- '--ignore=%s ' "${TRITON_FILES[@]}") tests")
    COMPILE_GROUPS=("${COMPILE_GROUPS[*]}")
else
    KERNEL_FILTER="-k 'not cpu and not cuda and not inductor and not compile_for_cuda_target'"
fi

tests_phase() {  # tests_phase NAME "COMMON ARGS" GROUP...: the groups at once, then their logs
    local name=$1
    phase "$name" bash "$SELF" --parallel-pytest "$JUNIT_DIR" "$@"
    cat "$JUNIT_DIR/$name"_*.log >> "$LOG" 2> /dev/null
    rm -f "$JUNIT_DIR/$name"_*.log
    # one junit file for all test phases so far (the 8-file limit)
    "$PY" scripts/check_session_out.py merge-junit "$OUT_DIR/tests.xml" "$JUNIT_DIR"/*.xml \
        >> "$LOG" 2>&1
}

log "gpu_session: commit $COMMIT, total ${TOTAL}s, out $OUT_DIR"
phase env bash "$SELF" --environment
if ! phase build "$PY" -c "import time; from mat_fast.ops import native_build as nb; t = time.time(); reason = nb.probe('$BUILD_DEVICE', '$BUILD_DEVICE'); print('native extension for $BUILD_DEVICE:', reason or 'ready', f'({time.time() - t:.1f} s)'); raise SystemExit(1 if reason else 0)"; then
    # Otherwise every later use of the 'cuda' backend would start the build again and spend
    # that phase's budget on it (the first session lost its attention phase so): from here
    # the 'cpu'/'cuda' backends say at once that they are unavailable, the benchmarks skip
    # them with that reason and their tests fail with it.
    export MAT_FAST_NO_BUILD=1
    log "== build: not ready; MAT_FAST_NO_BUILD=1 for the later phases (no cuda backend)"
fi
tests_phase tests_kernels "$COMMON $KERNEL_FILTER" "${KERNEL_GROUPS[@]}"
tests_phase tests_gpu "$COMMON -m gpu -k 'not inductor'" "${GPU_GROUPS[@]}"
phase train "$PY" benchmarks/train.py "${TRAIN_ARGS[@]}" --out "$OUT_DIR"
tests_phase tests_compile "$COMMON -m gpu" "${COMPILE_GROUPS[@]}"
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
rm -rf "$JUNIT_DIR"
"$PY" scripts/check_session_out.py check "$OUT_DIR" --total "$TOTAL" "${CHECK_ARGS[@]}" 2>&1 | tee -a "$LOG"
check=${PIPESTATUS[0]}
log "gpu_session: done in $((SECONDS - START))s"
exit "$check"
