#!/usr/bin/env bash
# The main job, no downloads: set up .venv (scripts/setup_env.sh), then inpaint the bundled
# sample with a seeded random network on CPU.
# With real weights: .venv/bin/mat-fast inpaint IMAGE MASK -o OUT --checkpoint Places_512_FullData.pkl
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY="$(bash scripts/setup_env.sh --print-python)"
mkdir -p demo_out
"$PY" -m mat_fast inpaint mat_fast/assets/sample.png mat_fast/assets/sample_mask.png \
    -o demo_out/sample_filled.png --comparison demo_out/sample_comparison.png \
    --random-weights --seed 0 --device cpu "$@"
