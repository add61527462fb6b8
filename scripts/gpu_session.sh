#!/usr/bin/env bash
# Everything this project checks on a GPU, in as few device calls as the 10-minute limit
# allows (no GPU has been lent to it yet: this is the runbook for the first one).
#
#   bash scripts/gpu_session.sh tests            # GPU tests, incl. the CUDA extension's JIT build
#   bash scripts/gpu_session.sh attention        # benchmarks/attention.py
#   bash scripts/gpu_session.sh generator        # benchmarks/generator.py, 512 and 1024, B 1 and 8
#   bash scripts/gpu_session.sh precision        # benchmarks/precision.py on cuda
#   bash scripts/gpu_session.sh tests attention  # several phases, in order
#
# Runs from the repository root with the machine's own torch/triton (PYTHONPATH=., no
# install, no internet). Output goes to $OUT (default ./gpu_out): env.txt, one log per
# phase, the benchmarks' JSON/PNG. The upstream sample images live outside the repo
# (../shared); to have the image-based tests and the precision phase run, copy
# ../shared into the repo under an ignored folder, pass it along, and point
# MAT_FAST_SHARED at it. Each phase has its own time limit (seconds, env *_LIMIT).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MAT_FAST_CACHE="${MAT_FAST_CACHE:-/tmp/mat_fast_cache}"
PY="${PYTHON:-python3}"

{
  date -u
  git rev-parse HEAD 2>/dev/null || echo "(no git)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1
  command -v nvcc >/dev/null && nvcc --version | tail -1
} > "$OUT/env.txt"
cat "$OUT/env.txt"

phase() {  # phase NAME LIMIT COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  return 0
}

for what in "${@:-tests attention generator precision}"; do
  for p in $what; do
    case "$p" in
      tests)
        phase tests "${TESTS_LIMIT:-420}" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
          --junitxml="$OUT/tests.xml" ;;
      attention)
        phase attention "${ATTENTION_LIMIT:-300}" "$PY" benchmarks/attention.py --out "$OUT" ;;
      generator)
        phase generator "${GENERATOR_LIMIT:-540}" "$PY" benchmarks/generator.py --out "$OUT" ;;
      precision)
        phase precision "${PRECISION_LIMIT:-300}" "$PY" benchmarks/precision.py --device cuda --out "$OUT" ;;
      *)
        echo "unknown phase '$p' (tests, attention, generator, precision)" >&2
        exit 2 ;;
    esac
  done
done
