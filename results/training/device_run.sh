#!/usr/bin/env bash
# One device call: train 4 candidates side by side on one GPU, bring back fp16 weights + logs.
# Env: MIN (training minutes), REP (repeats), EPOCHS, OUT, DEV (cuda|cpu), W (worker scale)
set -u
ROOT=$(pwd)
export PYTHONPATH=$ROOT/.gpu/code:$ROOT/.gpu/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP:-2}
MIN=${MIN:-6}; REP=${REP:-20}; EPOCHS=${EPOCHS:-200}; DEV=${DEV:-cuda}; W=${W:-1}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
DATA=/tmp/glasdata; RUNS=/tmp/runs; rm -rf $DATA $RUNS; mkdir -p $DATA $RUNS
python3 - <<PY
from pathlib import Path
from PIL import Image
import shutil
src, dst = Path("$ROOT/.gpu/data"), Path("$DATA")
subset = int("${SUBSET:-0}")
for f in src.iterdir():
    if subset and f.name.startswith("train_") and int(f.stem.split("_")[1]) > subset:
        continue
    if f.suffix == ".jpg":
        Image.open(f).convert("RGB").save(dst / (f.stem + ".png"), compress_level=1)
    else:
        shutil.copy(f, dst / f.name)
print("data:", len(list(dst.iterdir())), "files")
PY
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
python3 -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__, torch.cuda.is_available())"
T="timeout $(python3 -c "print(int(float($MIN)*60+150))")"
common="--data $DATA --device $DEV --epochs $EPOCHS --max-minutes $MIN --val-every 1"
PIDS=()
$T python3 -m glandseg train --model unet-lite0 $common --out $RUNS/u0-full --scale 1.0 --crop 512 --tile 1024 \
  --batch-size 8 --lr 1e-3 --repeats $REP --workers $((4*W)) > $RUNS/u0-full.out 2>&1 & PIDS+=($!)
$T python3 -m glandseg train --model unet-lite0 --model-args '{"encoder": "lite2"}' $common --out $RUNS/u2-full \
  --scale 1.0 --crop 512 --tile 1024 --batch-size 8 --lr 1e-3 --repeats $REP --workers $((4*W)) > $RUNS/u2-full.out 2>&1 & PIDS+=($!)
$T python3 -m glandseg train --model unet-lite0 $common --out $RUNS/u0-half --scale 0.5 --crop 384 --tile 512 \
  --batch-size 8 --lr 1e-3 --repeats $REP --workers $((3*W)) > $RUNS/u0-half.out 2>&1 & PIDS+=($!)
$T python3 -m glandseg train --model maskrcnn-lite0 $common --out $RUNS/mr0-half --crop 384 \
  --optimizer sgd --lr 1e-2 --weight-decay 5e-4 --batch-size 4 --repeats $(( (REP+1)/2 )) --workers $((3*W)) > $RUNS/mr0-half.out 2>&1 & PIDS+=($!)
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; uptime; done ) &
MON=$!
wait "${PIDS[@]}"
kill $MON 2>/dev/null
python3 - <<PY
from pathlib import Path
import json
from safetensors.torch import load_file, save_file
runs = Path("$RUNS")
for r in sorted(runs.iterdir()):
    if r.is_dir() and (r / "best.safetensors").is_file():
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(r / "best.safetensors").items()}
        save_file(sd, r / "best16.safetensors")
        print(r.name, "best epoch", json.loads((r / "config.json").read_text()).get("validation", {}).get("best", {}).get("epoch"))
PY
for r in $RUNS/*/; do n=$(basename $r); cp $r/best16.safetensors $OUT/$n.safetensors 2>/dev/null; done
tar -C $RUNS --exclude='*.safetensors' -czf $OUT/runs.tar.gz .
ls -la $OUT; for f in $RUNS/*.out; do echo "== $f"; tail -5 $f; done
