#!/usr/bin/env bash
# glas-unet v5 on one GPU (issue 20): patient-wise 5-fold cross-validation over all 85 GlaS
# training images + one final model on all 85, 6 models trained side by side on the device
# (device-resident data, batched augmentation on the GPU, bf16 autocast, channels_last),
# out-of-fold maps of all 85 images for TTA none / flip / dihedral (8 poses), then TTA,
# watershed seeds (contour or distance head) and thresholds chosen on the OOF maps.
# Budget: <= 12 minutes of one H200 (MIN minutes of training per model, all at once; the
# cosine schedule follows the time budget; STEPS is only an upper bound).
# Everything lands in $OUT: summary.json, selection.csv, folds.json, fp16 weights of the 5
# fold models and the final model (*.safetensors + config), logs, and the OOF maps
# (oof_<mode>.tar, uint8 npz).
# Env: DATA (GlaS folder: train_N, train_N_anno, Grade.csv; default .gpu/data: see below),
#      MIN (training minutes per model, default 7), STEPS (default 100000), CROP (512),
#      SCALE (1.0), BATCH (16), PAR (models at once, default 6), FOLDS (5), DEV (cuda|cpu),
#      QUICK=1 (the --quick check: 2 folds of 3 images, 64 px crops, 2 steps; runs on a CPU)
# Data: copy the 85 GlaS training images, their annotations and Grade.csv into .gpu/data
# (git-ignored; within the 64 MiB carry only as JPEG copies of the images, as v2-v4 did: then
# the model card must say that training saw JPEG q95 copies).
# CPU check (what was run without a GPU): QUICK=1 DEV=cpu DATA=../shared/glas OUT=/tmp/q \
#   bash results/training/v5_gpu.sh
set -u
ROOT=$(pwd)
export PYTHONPATH=$ROOT:$ROOT/.gpu/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP:-2}
DATA=${DATA:-$ROOT/.gpu/data}; OUT=${OUT:-/tmp/out}; DEV=${DEV:-cuda}
MIN=${MIN:-7}; STEPS=${STEPS:-100000}; CROP=${CROP:-512}; SCALE=${SCALE:-1.0}; BATCH=${BATCH:-16}
PAR=${PAR:-6}; FOLDS=${FOLDS:-5}; WORK=${WORK:-/tmp/v5}
PY=${PY:-python3}
mkdir -p "$OUT"; rm -rf "$WORK"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
$PY -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__, torch.cuda.is_available())"
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; done ) &
MON=$!
if [ "${QUICK:-0}" = 1 ]; then
  ARGS=(--quick --tta none,dihedral --no-pretrained --workers 2 --parallel 1)
else
  ARGS=(--folds "$FOLDS" --steps "$STEPS" --max-minutes "$MIN" --crop "$CROP" --scale "$SCALE"
        --batch-size "$BATCH" --parallel "$PAR" --workers "$(nproc)" --tta none,flip,dihedral)
fi
# the whole run is cut at 11.5 minutes whatever happens (what was written stays in $WORK)
timeout 690 $PY results/training/v5_cv.py --data "$DATA" --out "$WORK" --device "$DEV" "${ARGS[@]}" \
  > "$OUT/v5_cv.out" 2>&1
RC=$?
kill $MON 2>/dev/null
echo "v5_cv exit $RC after $(( $(date +%s) - T0 )) s"
$PY - "$WORK" "$OUT" <<'PY'
import json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
work, out = Path(sys.argv[1]), Path(sys.argv[2])
for run in sorted([*work.glob("fold_*"), work / "final"]):
    w = run / "weights.safetensors"
    if w.is_file():
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(w).items()}
        save_file(sd, out / f"{run.name}.safetensors")
        for f in ("config.json", "log.csv", "info.json"):
            if (run / f).is_file():
                shutil.copy(run / f, out / f"{run.name}.{f}")
for f in ("summary.json", "selection.csv", "folds.json", "job_0.out"):
    if (work / f).is_file():
        shutil.copy(work / f, out / f)
for f in work.glob("job_*.out"):
    shutil.copy(f, out / f.name)
s = work / "summary.json"
print(json.dumps(json.loads(s.read_text()), indent=1) if s.is_file() else "no summary")
PY
for mode in none flip dihedral; do
  ls "$WORK"/fold_*/oof/$mode >/dev/null 2>&1 && \
    tar -C "$WORK" -cf "$OUT/oof_$mode.tar" $(cd "$WORK" && ls -d fold_*/oof/$mode)
done
ls -la "$OUT"; tail -3 "$OUT/v5_cv.out"
echo "total $(( $(date +%s) - T0 )) s"
exit $RC
