"""Validation-only checks of the GPU candidates: TTA on/off for the chosen U-Net, and the
Mask R-CNN post-processing tuning that the device run did not finish.

Run on the run folders brought back from the device (runs/gpu1/*, checkpoint format of
that time: last_state.json), as `.venv/bin/python results/validation_checks.py tta|mrcnn`;
output in results/validation_checks.log."""
import json
import sys
import time

from glandseg.data.discover import discover
from glandseg.data.io import read_image, read_label
from glandseg.infer.predictor import Predictor
from glandseg.metrics.score import score_pairs
from glandseg.train import checkpoint as ckpt


def val_data(run):
    cfg = json.load(open(f"{run}/config.json"))
    names = set(cfg["train"]["val_images"])
    return [(s.name, read_image(s.image), read_label(s.anno)) for s in discover("../shared/glas", splits=("train",)) if s.name in names]

what = sys.argv[1]
if what == "tta":
    run = "runs/gpu1/u0-full"
    vd = val_data(run)
    for tta in (False, True):
        t = time.time()
        p = Predictor.from_name(run, device="cpu", tta=tta)
        items = [(n, p.predict(img), truth) for n, img, truth in vd]
        m = next(iter(score_pairs(items).values()))["pooled"]
        print(f"tta={tta}", {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}, f"{time.time()-t:.0f}s", flush=True)
elif what == "mrcnn":
    from glandseg.infer.instances import tune_instances
    run = "runs/gpu1/mr0-half"
    vd = val_data(run)
    p = Predictor.from_name(run, device="cpu")
    params, score = tune_instances(p, vd)
    cfg = ckpt.load_json(f"{run}/config.json")
    cfg["postprocess"] = params
    cfg.setdefault("validation", {})["tuned_object_dice"] = score
    cfg["validation"]["best"] = max(json.load(open(f"{run}/last_state.json"))["history"], key=lambda r: r["val_object_dice"])
    ckpt.save_json(f"{run}/config.json", cfg)
    print("maskrcnn tuned", params, score)
