"""Validation object Dice (pooled, official, 18 validation images of held-out patients)
against training minutes, for the recipes trained here. Reads results/training/*/metrics.csv
and the old bundled glas-unet's model card (git history); writes results/validation_curves.png.

    .venv/bin/python results/plot_validation.py
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
RUNS = {
    "gpu1-u0-full": "new: unet-lite0, full res, 512² crops (bundled glas-unet v2)",
    "gpu1-u2-full": "unet-lite0 + Lite2 encoder, full res, 512² crops",
    "gpu1-u0-half": "unet-lite0, half res, 384² crops",
    "gpu1-mr0-half": "maskrcnn-lite0, half res, 384² crops (bundled glas-maskrcnn v2)",
}
OLD_CARD_COMMIT = "6a67317"  # the commit that bundled glas-unet v1


def main() -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for run, label in RUNS.items():
        rows = list(csv.DictReader(open(HERE / "training" / run / "metrics.csv")))
        minutes, t = [], 0.0
        for r in rows:
            t += float(r["seconds"]) / 60
            minutes.append(t)
        ax.plot(minutes, [float(r["val_object_dice"]) for r in rows], marker="o", label=label)
    old = json.loads(subprocess.run(["git", "show", f"{OLD_CARD_COMMIT}:glandseg/weights/glas-unet.json"],
                                    capture_output=True, text=True, check=True).stdout)
    best = old["validation"]["best"]
    ax.scatter([55.0], [best["val_object_dice"]], marker="*", s=200, color="k", zorder=5,
               label=f"old: glas-unet v1 best epoch ({best['epoch']}), 55 min on 1 CPU core "
                     "(only its best point was kept)")
    ax.set_xlabel("training minutes (new: one H200 shared by 4 runs; old: 1 CPU core)")
    ax.set_ylabel("validation object Dice (pooled, untuned thresholds)")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Validation only: object Dice on 18 held-out-patient images")
    fig.tight_layout()
    fig.savefig(HERE / "validation_curves.png", dpi=110)
    print(HERE / "validation_curves.png")


if __name__ == "__main__":
    main()
