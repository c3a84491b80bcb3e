#!/usr/bin/env bash
# The GPU study: the study's tuning protocol (random 50 broad + 50 narrowed trials x 20 epochs,
# then 100 long + 30 babysitting epochs of the winner) and TPE + Hyperband (100 trials),
# for unet-lite0 and maskrcnn-lite0 (v3 options: 56² mask head, gland-fit anchors), at full
# resolution, WORKERS trial processes sharing the one GPU (one SQLite study per folder).
# Budget: HOURS GPU-hours of search + FINAL_MIN minutes of final training per study,
# 4 studies (default 4 x (6 h + 90 min) = 30 GPU-hours). Resumable: run it again.
# Selection on the held-out validation patients only; Test A/B are not read.
#
# Env: DATA (GlaS folder; default ./.gpu/data, else /work/shared/glas), OUT (default
#      results/search/gpu), WORKERS (6), HOURS (6), FINAL_MIN (90), MODELS, STRATEGIES,
#      QUICK=1 (toy scale on the CPU: checks the pipeline in a few CPU-minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=${PY_OVERRIDE:-.venv/bin/python}
DATA=${DATA:-$([ -d .gpu/data ] && echo .gpu/data || echo /work/shared/glas)}
OUT=${OUT:-results/search/gpu}
MODELS=${MODELS:-unet-lite0 maskrcnn-lite0}
STRATEGIES=${STRATEGIES:-study tpe-hyperband}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ "${QUICK:-0}" = 1 ]; then
  exec $PY results/search/gpu_search.py --quick --data "$DATA" --out "$OUT" \
    --models $MODELS --strategies $STRATEGIES
fi
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
( while sleep 300; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; done ) &
MON=$!
trap 'kill $MON 2>/dev/null || true' EXIT
$PY results/search/gpu_search.py --data "$DATA" --out "$OUT" --device cuda \
  --workers "${WORKERS:-6}" --hours-per-study "${HOURS:-6}" --final-minutes "${FINAL_MIN:-90}" \
  --models $MODELS --strategies $STRATEGIES
