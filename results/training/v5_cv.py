"""glas-unet v5 driver: patient-wise k-fold cross-validation + final model, one folder.

    python results/training/v5_cv.py --data GLAS --out OUT [--folds 5] [--parallel 3] ...
    python results/training/v5_cv.py --quick --data GLAS --out OUT   # CPU check: seconds

Stages (``--stage all`` runs them in order): ``folds`` writes folds.json; each fold model
(and, unless --no-final, the final model on all images) is trained in its own process,
``--parallel`` at a time on one device, each writing weights, log.csv and its out-of-fold
maps; ``select`` chooses TTA, seeds and thresholds on the OOF maps of all images
(:func:`glandseg.train.cv.select`, ``--workers`` processes). A library entry point, not a
``glandseg`` verb: see glandseg/train/cv.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from glandseg import GlandsegError
from glandseg.train import cv

QUICK = {"folds": 2, "limit": 6, "crop": 64, "scale": 0.5, "steps": 2, "batch_size": 2,
         "tta": ("none", "dihedral"), "log_every": 1}
QUICK_GRIDS = {"contour": {"interior_threshold": [0.5, 0.6], "foreground_threshold": [0.5],
                           "min_area": [100], "min_seed_area": [30], "fill_holes": [True]},
               "distance": {"seed_threshold": [0.4, 0.5], "foreground_threshold": [0.5],
                            "min_area": [100], "min_seed_area": [10], "fill_holes": [True]}}

#: ``--small-grid``: a reduced grid for a CPU proof run (the full grids are the defaults).
SMALL_GRIDS = {"contour": {"interior_threshold": [0.5, 0.6], "foreground_threshold": [0.5],
                           "min_area": [100, 300], "min_seed_area": [30], "fill_holes": [True],
                           "boundary_weight": [0.0, 1.0]},
               "distance": {"seed_threshold": [0.4, 0.5, 0.6], "foreground_threshold": [0.5],
                            "min_area": [100, 300], "min_seed_area": [10], "fill_holes": [True]}}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--stage", choices=("all", "folds", "fold", "select"), default="all")
    p.add_argument("--fold", type=int, default=None, help="with --stage fold: 0..K-1, K = final")
    p.add_argument("--quick", action="store_true", help="tiny crops, 2 steps, 2 folds, 6 images")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--max-minutes", type=float, default=None, help="per model")
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", default="none,flip,dihedral")
    p.add_argument("--no-distance", action="store_true")
    p.add_argument("--no-final", action="store_true")
    p.add_argument("--no-pretrained", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--augment", default="{}", help="JSON of GpuAugment fields")
    p.add_argument("--parallel", type=int, default=1, help="models trained at once")
    p.add_argument("--workers", type=int, default=1, help="processes of the selection")
    p.add_argument("--small-grid", action="store_true", help="reduced threshold grids (CPU)")
    return p.parse_args(argv)


def config(a: argparse.Namespace) -> cv.CVConfig:
    c = cv.CVConfig(data=a.data, out=a.out, folds=a.folds, steps=a.steps,
                    max_minutes=a.max_minutes, crop=a.crop, scale=a.scale,
                    batch_size=a.batch_size, lr=a.lr, limit=a.limit, device=a.device,
                    tta=tuple(t for t in a.tta.split(",") if t), distance=not a.no_distance,
                    pretrained=not a.no_pretrained, compile=a.compile,
                    augment=json.loads(a.augment))
    if a.quick:
        c = dataclasses.replace(c, **QUICK)
    c.check()
    return c


def run_all(a: argparse.Namespace, c: cv.CVConfig) -> dict:
    out = Path(c.out)
    t0 = time.time()
    cv.write_folds(c)
    jobs = list(range(c.folds)) + ([] if a.no_final else [c.folds])
    base = _strip(a.argv)
    running: list[tuple[int, subprocess.Popen, object]] = []
    failed = []
    while jobs or running:
        while jobs and len(running) < max(1, a.parallel):
            k = jobs.pop(0)
            log = open(out / f"job_{k}.out", "w")  # noqa: SIM115 - closed when it ends
            cmd = [sys.executable, __file__, *base, "--stage", "fold", "--fold", str(k)]
            running.append((k, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(1)
        for item in list(running):
            k, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode:
                    failed.append(k)
    if failed:
        raise GlandsegError(f"model(s) {failed} failed; see {out}/job_K.out")
    train_s = time.time() - t0
    summary = cv.select(out, c.data, workers=a.workers, grids=_grids(a))
    summary["minutes"] = {"training_and_oof": round(train_s / 60, 2),
                          "total": round((time.time() - t0) / 60, 2)}
    infos = [json.loads((out / f"fold_{i}" / "info.json").read_text()) for i in range(c.folds)]
    summary["training"] = [{k: i[k] for k in ("tag", "steps", "seconds", "images_per_s",
                                                "oof_seconds", "device", "amp_bf16")}
                           for i in infos]
    from glandseg.train import checkpoint as ckpt

    ckpt.save_json(out / "summary.json", summary)
    return summary


def _grids(a: argparse.Namespace) -> dict | None:
    return QUICK_GRIDS if a.quick else SMALL_GRIDS if a.small_grid else None


def _strip(args: list[str]) -> list[str]:
    """The command line without ``--stage X`` and ``--fold N``."""
    out, skip = [], False
    for x in args:
        if skip:
            skip = False
            continue
        if x in ("--stage", "--fold"):
            skip = True
            continue
        if x.startswith(("--stage=", "--fold=")):
            continue
        out.append(x)
    return out


def main(argv=None) -> int:
    a = parse(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        c = config(a)
        Path(c.out).mkdir(parents=True, exist_ok=True)
        if a.stage == "folds":
            cv.write_folds(c)
        elif a.stage == "fold":
            if a.fold is None or not 0 <= a.fold <= c.folds:
                raise GlandsegError(f"--stage fold needs --fold 0..{c.folds}")
            print(json.dumps(cv.run_fold(c, a.fold)))
        elif a.stage == "select":
            print(json.dumps(cv.select(c.out, c.data, a.workers, _grids(a)), indent=1))
        else:
            print(json.dumps(run_all(a, c), indent=1))
    except GlandsegError as exc:
        print(f"v5_cv: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
