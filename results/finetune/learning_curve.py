"""Learning curve of "correct and retrain": fine-tune glas-unet on 1, 2, 5 and 10 corrected
images of a new "lab", chosen by uncertainty or at random; held-out F1 / object Dice.

The new lab is made from GlaS *training* patients only (the test parts are never touched):
each image is re-stained (HED: haematoxylin x1.4, eosin x0.6, skimage.color) and scanned at
another magnification (0.5x, 2x2 area average: 1.2401 µm/px, written in the PNG's pHYs so
that glandseg reads the resolution from the file). The held-out images are those of
glas-unet's six validation patients (4, 5, 6, 11, 14, 15: 18 images the model was never
trained on); the correction pool is drawn from the other training patients (seed 0; the
model saw those images, but in GlaS's stain and magnification). The pathologist's corrections are simulated by the GlaS
annotations, written as QuPath GeoJSON beside each image (glandseg.report.outputs.to_geojson),
which is what a corrected, exported prediction looks like.

Each fine-tune is ``glandseg -q train --init glas-unet --data SET --out RUN --workers 0``
with the small-set defaults (glandseg.train.finetune.SMALL_SET) and ``--max-minutes``;
its CPU time is that of the child process. Held-out images are predicted in this process
with ``Predictor.predict_with_proba(image, mpp=1.2401)`` and scored with the official
metrics (pooled over the held-out images).

Usage (resumable: finished runs are kept in WORK and reused)::

    nice -n 15 .venv/bin/python results/finetune/learning_curve.py --glas ../shared/glas \\
        --work /tmp/ft_work --out results/finetune
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

LAB_MPP = 0.62005 * 2
STAIN = (1.4, 0.6)  # haematoxylin, eosin multipliers in HED space


def make_lab_image(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-stain (HED x STAIN) and halve the magnification (2x2 area mean; labels: every
    second pixel). Returns ``(uint8 (h, w, 3), int32 (h, w))``."""
    from skimage.color import hed2rgb, rgb2hed
    from skimage.transform import downscale_local_mean

    hed = rgb2hed(image)
    hed[..., 0] *= STAIN[0]
    hed[..., 1] *= STAIN[1]
    rgb = np.clip(hed2rgb(hed), 0, 1)
    H, W = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    small = downscale_local_mean(rgb[:H, :W], (2, 2, 1))
    return (small * 255 + 0.5).astype(np.uint8), labels[:H:2, :W:2].astype(np.int32)


def build_lab(glas: Path, work: Path, heldout_patients: list[int], n_pool: int,
              seed: int) -> dict:
    """Write the lab's images (``lab/<stem>.png``, truth ``truth/<stem>.png``) and the split:
    held-out = the images of ``heldout_patients``; pool = other training patients (shuffled
    with ``seed``) until it holds ``n_pool`` images."""
    from glandseg.data.discover import discover
    from glandseg.data.io import read_image, read_label, write_label

    split_file = work / "split.json"
    if split_file.is_file():
        return json.loads(split_file.read_text())
    samples = discover(glas, splits=("train",))
    by_patient: dict[int, list] = {}
    for s in samples:
        by_patient.setdefault(s.patient, []).append(s)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    heldout = [s for p in heldout_patients for s in by_patient[p]]
    pool = []
    for p in patients:
        if p not in heldout_patients and len(pool) < n_pool:
            pool += by_patient[p]
    (work / "lab").mkdir(parents=True, exist_ok=True)
    (work / "truth").mkdir(parents=True, exist_ok=True)
    dpi = 25400.0 / LAB_MPP
    for s in heldout + pool:
        img, lab = make_lab_image(read_image(s.image), read_label(s.anno))
        Image.fromarray(img).save(work / "lab" / f"{s.name}.png", dpi=(dpi, dpi))
        write_label(work / "truth" / f"{s.name}.png", lab)
    split = {"heldout": [s.name for s in heldout], "pool": [s.name for s in pool],
             "heldout_patients": sorted({s.patient for s in heldout}),
             "pool_patients": sorted({s.patient for s in pool}),
             "patient": {s.name: s.patient for s in heldout + pool}}
    split_file.write_text(json.dumps(split, indent=1))
    return split


def predict_all(model: str, names: list[str], work: Path) -> dict:
    """``{name: (labels, uncertainty)}`` of the lab images predicted by ``model``."""
    from glandseg.data.io import read_image
    from glandseg.infer.predictor import Predictor
    from glandseg.metrics.uncertainty import uncertainty

    pred = Predictor.from_name(model, device="cpu", backend="torch")
    out = {}
    for n in names:
        labels, probs = pred.predict_with_proba(read_image(work / "lab" / f"{n}.png"), mpp=LAB_MPP)
        out[n] = (labels, uncertainty(probs))
    return out


def score(preds: dict, work: Path) -> dict:
    from glandseg.data.io import read_label
    from glandseg.metrics.score import score_pairs

    items = [(n, preds[n][0], read_label(work / "truth" / f"{n}.png")) for n in sorted(preds)]
    m = next(iter(score_pairs(items).values()))["pooled"]
    return {"f1": m["f1"], "object_dice": m["object_dice"], "object_hausdorff": m["object_hausdorff"]}


def make_set(work: Path, name: str, images: list[str], patient: dict) -> Path:
    """A correction folder: the chosen lab images with their GeoJSON corrections and a
    Grade.csv-free layout (patients recorded for the reader only)."""
    from glandseg.data.io import read_label
    from glandseg.report.outputs import to_geojson

    folder = work / "sets" / name
    folder.mkdir(parents=True, exist_ok=True)
    for n in images:
        dst = folder / f"{n}.png"
        if not dst.exists():
            os.link(work / "lab" / f"{n}.png", dst)
        gj = folder / f"{n}.geojson"
        if not gj.exists():
            coll = to_geojson(read_label(work / "truth" / f"{n}.png"), LAB_MPP, image_name=n)
            gj.write_text(json.dumps(coll))
    return folder


def finetune(work: Path, name: str, folder: Path, minutes: float, extra: list[str]) -> dict:
    run = work / "runs" / name
    info = work / "runs" / f"{name}.json"
    if info.is_file():
        return json.loads(info.read_text())
    if run.exists():
        import shutil

        shutil.rmtree(run)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    cmd = [sys.executable, "-m", "glandseg", "-q", "train", "--init", "glas-unet", "--data",
           str(folder), "--out", str(run), "--workers", "0", "--device", "cpu",
           "--max-minutes", str(minutes), *extra]
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cfg = json.loads((run / "config.json").read_text())
    res = {"cpu_minutes": round((after.ru_utime - before.ru_utime
                                 + after.ru_stime - before.ru_stime) / 60, 2),
           "wall_minutes": round((time.time() - t0) / 60, 2),
           "epochs_done": len(list(csv.DictReader(open(run / "metrics.csv")))),
           "notes": cfg["train"].get("notes", []), "command": " ".join(cmd[1:])}
    info.write_text(json.dumps(res, indent=1))
    return res


def plot(rows: list[dict], base: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ("f1", "object_dice"), ("held-out F1", "held-out object Dice"),
                              strict=True):
        ax.axhline(base[key], color="grey", ls="--", label="glas-unet, untouched")
        for strat, style in (("uncertain", "o-"), ("random", "s--")):
            rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["n_images"])
            ax.plot([r["n_images"] for r in rs], [r[key] for r in rs], style,
                    label=f"{strat}-chosen images")
        ax.set_xlabel("corrected images fine-tuned on")
        ax.set_xticks([1, 2, 5, 10])
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("New lab (HED H x1.4 E x0.6, 0.5x): fine-tuning glas-unet", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--glas", default="../shared/glas")
    ap.add_argument("--work", default="/tmp/ft_work")
    ap.add_argument("--out", default="results/finetune")
    ap.add_argument("--sizes", default="1,2,5,10")
    ap.add_argument("--heldout-patients", default="4,5,6,11,14,15",
                    help="held-out patients (default: glas-unet's validation patients, never "
                         "trained on: 18 images)")
    ap.add_argument("--pool", type=int, default=24, help="correction pool (whole patients)")
    ap.add_argument("--minutes", type=float, default=4.0, help="--max-minutes of a fine-tune")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--collect", action="store_true",
                    help="write the CSV and plot from the runs finished in WORK; train nothing")
    ap.add_argument("--extra", default="", help="extra train options, e.g. '--freeze-encoder'")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(2)
    split = build_lab(Path(args.glas), work, [int(p) for p in args.heldout_patients.split(",")],
                      args.pool, args.seed)
    cache = work / "baseline.json"
    if cache.is_file():
        b = json.loads(cache.read_text())
    else:
        preds = predict_all("glas-unet", split["heldout"] + split["pool"], work)
        held = {n: preds[n] for n in split["heldout"]}
        b = {"scores": score(held, work),
             "uncertainty": {n: preds[n][1] for n in split["pool"] + split["heldout"]}}
        cache.write_text(json.dumps(b, indent=1))
    base = b["scores"]
    print(f"untouched glas-unet on {len(split['heldout'])} held-out images: {base}", flush=True)
    unc = b["uncertainty"]
    by_unc = sorted(split["pool"], key=lambda n: -unc[n])
    rnd = list(split["pool"])
    random.Random(args.seed).shuffle(rnd)
    rows = []
    extra = args.extra.split()
    tag = "_".join(e.strip("-") for e in extra)
    for n in [int(x) for x in args.sizes.split(",")]:
        for strat, order in (("uncertain", by_unc), ("random", rnd)):
            chosen = order[:n]
            name = f"{strat}_{n}" + (f"_{tag}" if tag else "")
            sc_file = work / "runs" / f"{name}.score.json"
            if args.collect and not sc_file.is_file():
                continue
            folder = make_set(work, name, chosen, split["patient"])
            info = finetune(work, name, folder, args.minutes, extra)
            if sc_file.is_file():
                sc = json.loads(sc_file.read_text())
            else:
                sc = score(predict_all(str(work / "runs" / name), split["heldout"], work), work)
                sc_file.write_text(json.dumps(sc))
            row = {"strategy": strat, "n_images": n, "f1": round(sc["f1"], 4),
                   "object_dice": round(sc["object_dice"], 4),
                   "object_hausdorff": round(sc["object_hausdorff"], 1),
                   "cpu_minutes": info["cpu_minutes"], "wall_minutes": info["wall_minutes"],
                   "epochs_done": info["epochs_done"], "options": args.extra,
                   "images": " ".join(chosen),
                   "mean_uncertainty": round(float(np.mean([unc[c] for c in chosen])), 4)}
            rows.append(row)
            print(row, flush=True)
            write_results(rows, base, split, out, tag, torch.__version__)
    return 0


def write_results(rows: list[dict], base: dict, split: dict, out: Path, tag: str,
                  torch_version: str) -> None:
    """The CSV (with the untouched model, the split and the command in comment lines) and
    the plot, rewritten after every run so a partial run leaves its results."""
    fields = list(rows[0])
    suffix = f"_{tag}" if tag else ""
    with open(out / f"learning_curve{suffix}.csv", "w", newline="") as f:
        f.write(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                f"(shared), python {platform.python_version()}, torch {torch_version}\n")
        f.write(f"# untouched glas-unet: f1 {base['f1']:.4f} object_dice {base['object_dice']:.4f}"
                f" object_hausdorff {base['object_hausdorff']:.1f}; held-out {len(split['heldout'])}"
                f" images (patients {split['heldout_patients']}), pool {len(split['pool'])} "
                f"(patients {split['pool_patients']})\n")
        f.write(f"# command: nice -n 15 .venv/bin/python {' '.join(sys.argv)}\n")
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    plot(rows, base, out / f"learning_curve{suffix}.png")


if __name__ == "__main__":
    sys.exit(main())
