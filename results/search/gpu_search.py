"""Driver of the GPU study (``results/search/gpu_search.sh``): the study's tuning protocol
and TPE + Hyperband, for unet-lite0 and maskrcnn-lite0 (v3 options), under one folder.

For each model x strategy it runs one resumable ``glandseg search`` command
(``OUT/MODEL-STRATEGY/``: ``study.db``, ``trials.csv``, ``best.json``, plots,
``protocol.json``, ``final/``), several worker processes sharing the one GPU; then it
writes ``OUT/summary.csv``, ``OUT/summary.md`` and ``OUT/progress.png`` (best validation
object Dice so far vs finished trials and vs trial GPU-minutes, one line per study).

Strategies (``glandseg search --protocol``): ``study`` = random search, 50 broad + 50
narrowed trials x 20 epochs, no pruning, then 100 long epochs + 30 babysitting epochs of the
winner; ``tpe-hyperband`` = 100 TPE trials of up to 20 epochs pruned by Hyperband, then the
same final training. Full resolution (scale 1.0). Every selection uses the held-out
validation patients (``--val-fraction 0.2``, seed 0), never Test A/B.

Budget (stated, enforced): ``--hours-per-study`` (default 6 GPU-hours, wall time of the
search on the one GPU shared by ``--workers`` processes; ``--timeout-minutes`` of glandseg
search, so no trial starts after it) plus ``--final-minutes`` (default 90) of final
training per study: 4 studies = at most 4 x 7.5 = 30 GPU-hours, the same for both models
and both strategies.

``--quick``: the whole thing at toy scale on the CPU (quarter resolution, 64-128 px crops,
2 + 2 trials x 1 epoch, 2 long + 1 babysitting epoch, 2 workers), to check the pipeline.

Usage: python results/search/gpu_search.py --data DIR --out DIR [--quick] [--models ...]
       [--strategies ...] [--workers K] [--device cuda]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = ("unet-lite0", "maskrcnn-lite0")
STRATEGIES = ("study", "tpe-hyperband")
GLAND_SIZES = ROOT / "results" / "maskrcnn_v3" / "gland_sizes.json"


def v3_model_args(scale: float) -> dict:
    """glas-maskrcnn v3's fixed architecture: a 56-px mask head and the gland-fit anchors
    of ``gland_sizes.json`` (full-resolution px, scaled to the working ``scale``)."""
    a = json.loads(GLAND_SIZES.read_text())["anchors"]["v3"]
    return {"mask_resolution": 56 if scale >= 0.5 else 28,
            "anchor_sizes": [max(4, round(s * scale)) for s in a["anchor_sizes"]],
            "anchor_scales": a["anchor_scales"], "aspect_ratios": a["aspect_ratios"]}


def space(model: str, quick: bool) -> dict:
    """The searched space (a file for ``--space``; it replaces the default space's keys)."""
    crops = [64, 96, 128] if quick else [384, 512]
    if model.startswith("unet"):
        return {"lr": {"low": 1e-4, "high": 3e-3, "log": True},
                "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
                "batch_size": {"choices": [4, 8] if quick else [4, 8, 16]},
                "crop": {"choices": crops}, "augment_strength": {"low": 0.25, "high": 1.5},
                "loss_dice": {"low": 0.0, "high": 1.5}, "encoder": "lite0"}
    return {"lr": {"low": 1e-3, "high": 3e-2, "log": True},
            "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True},
            "batch_size": {"choices": [2, 4]}, "crop": {"choices": crops},
            "augment_strength": {"low": 0.25, "high": 1.5},
            "loss_mask": {"low": 0.5, "high": 2.0}, "loss_box_reg": {"low": 0.5, "high": 2.0},
            "model_args.box_positive_fraction": {"low": 0.25, "high": 0.75},
            "model_args.box_batch_size_per_image": {"choices": [128, 256, 512]},
            "optimizer": "sgd", "encoder": "lite0"}


def command(model: str, strategy: str, a: argparse.Namespace, out: Path) -> list[str]:
    scale = 0.25 if a.quick else 1.0
    sp = out / "spaces" / f"{model}.json"
    sp.parent.mkdir(parents=True, exist_ok=True)
    sp.write_text(json.dumps(space(model, a.quick), indent=1) + "\n")
    cmd = [sys.executable, "-m", "glandseg", "-q", "search", "--protocol", strategy,
           "--model", model, "--data", a.data, "--out", str(out / f"{model}-{strategy}"),
           "--space", str(sp), "--scale", str(scale), "--device", a.device,
           "--workers", str(a.workers), "--val-fraction", "0.2", "--seed", "0"]
    if model.startswith("maskrcnn"):
        cmd += ["--model-args", json.dumps(v3_model_args(scale))]
    if a.quick:
        epochs = "2" if strategy == "tpe-hyperband" else "1"  # Hyperband: 2 rungs at least
        cmd += ["--trials", "4", "--epochs", epochs, "--repeats", "1", "--long-epochs", "2",
                "--babysit-epochs", "1", "--loader-workers", "0"]
    else:
        cmd += ["--trials", "100", "--epochs", "20", "--repeats", str(a.repeats),
                "--loader-workers", str(a.loader_workers),
                "--timeout-minutes", str(60 * a.hours_per_study),
                "--final-minutes", str(a.final_minutes)]
    return cmd


def best_so_far(trials_csv: Path) -> list[tuple[int, float, float]]:
    """(finished trials, summed trial minutes, best value so far) in completion order."""
    if not trials_csv.is_file():
        return []
    with open(trials_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["state"] in ("COMPLETE", "PRUNED")]
    rows.sort(key=lambda r: r["datetime_complete"])
    out, best, minutes = [], float("-inf"), 0.0
    for i, r in enumerate(rows, start=1):
        minutes += float(r["minutes"] or 0)
        if r["state"] == "COMPLETE" and r["value"]:
            best = max(best, float(r["value"]))
        out.append((i, minutes, best))
    return out


def summarise(out: Path, runs: list[tuple[str, str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model, strategy, wall in runs:
        d = out / f"{model}-{strategy}"
        curve = best_so_far(d / "trials.csv")
        proto = json.loads((d / "protocol.json").read_text()) if (d / "protocol.json").is_file() \
            else {}
        fin = (proto.get("final") or {}).get("phases", {})
        s = proto.get("search", {})
        rows.append({
            "model": model, "strategy": strategy, "finished_trials": len(curve),
            "trial_minutes": round(curve[-1][1], 2) if curve else 0,
            "wall_minutes": round(wall, 2),
            "best_stage1": (s.get("stage1") or {}).get("best_value"),
            "best_stage2": (s.get("stage2") or {}).get("best_value"),
            "best_search": proto.get("best_trial", {}).get("value"),
            "final_long": (fin.get("long") or {}).get("best_val_object_dice"),
            "final_babysit": (fin.get("babysit") or {}).get("best_val_object_dice"),
            "final_tuned": ((proto.get("final") or {}).get("validation") or {}).get(
                "tuned_object_dice"),
        })
        if curve:
            label = f"{model} {strategy}"
            ax1.step([c[0] for c in curve], [c[2] for c in curve], where="post", label=label)
            ax2.step([c[1] for c in curve], [c[2] for c in curve], where="post", label=label)
    for ax, x in ((ax1, "finished trials"), (ax2, "trial minutes (summed over workers)")):
        ax.set_xlabel(x)
        ax.set_ylabel("best validation object Dice so far")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle("Search progress (validation = held-out training patients)")
    fig.tight_layout()
    tmp = out / ".progress.png.tmp"
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, out / "progress.png")
    keys = list(rows[0]) if rows else []
    tmp = out / ".summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "summary.csv")

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    tmp = out / ".summary.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, out / "summary.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="toy scale on the CPU")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--workers", type=int, default=None,
                   help="trial processes sharing the device (default 6 on cuda, 2 quick)")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    p.add_argument("--hours-per-study", type=float, default=6.0)
    p.add_argument("--final-minutes", type=float, default=90.0)
    p.add_argument("--repeats", type=int, default=4, help="passes over the images per epoch")
    p.add_argument("--loader-workers", type=int, default=2)
    a = p.parse_args(argv)
    a.device = a.device or ("cpu" if a.quick else "cuda")
    a.workers = a.workers or (2 if a.quick else 6)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, failed = [], []
    for model in a.models:
        for strategy in a.strategies:
            cmd = command(model, strategy, a, out)
            print("$", " ".join(cmd), flush=True)
            t0 = time.time()
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            r = subprocess.run(cmd, cwd=ROOT, env=env)
            runs.append((model, strategy, (time.time() - t0) / 60))
            if r.returncode:
                failed.append(f"{model}-{strategy} (exit {r.returncode})")
            summarise(out, runs)
    print((out / "summary.md").read_text())
    if failed:
        print("failed:", ", ".join(failed), "- run the same command again to continue",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
