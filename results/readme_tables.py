"""Print the README's result tables from the committed evaluations of the bundled models
(glandseg/weights/NAME.eval/, written by `python -m glandseg.train.export evaluate NAME --data
GLAS --why TEXT`, i.e. `glandseg evaluate` on the shipped fp16 files; earlier bundles'
evaluations are kept in results/previous/, v1's as its model card), and draw the U-Net vs Mask R-CNN per-image scatter
(results/unet_vs_maskrcnn_scatter.png) for the pair trained with equal budgets (glas-unet v2
and glas-maskrcnn v2).

    .venv/bin/python results/readme_tables.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from glandseg.report.leaderboard import RANKED_KINDS, load_published, rank_many  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
W = ROOT / "glandseg" / "weights"
MODELS = ("glas-unet", "glas-maskrcnn")
#: Earlier bundles (results/previous/NAME.eval/), printed as extra rows.
PREVIOUS = {"glas-unet": ("glas-unet-v3", "glas-unet-v2")}
#: The scatter compares the two trained with equal budgets (6.5 GPU-minutes each).
SCATTER = {"glas-unet": ROOT / "results" / "previous" / "glas-unet-v2.eval",
           "glas-maskrcnn": W / "glas-maskrcnn.eval"}
COLS = (("f1", "testA"), ("f1", "testB"), ("object_dice", "testA"), ("object_dice", "testB"),
        ("object_hausdorff", "testA"), ("object_hausdorff", "testB"))
PUB_COLS = ("f1_a", "f1_b", "object_dice_a", "object_dice_b", "object_hausdorff_a",
            "object_hausdorff_b")


def fmt(v: float, k: str) -> str:
    return f"{v:.2f}" if k == "object_hausdorff" else f"{v:.3f}"


def row(label: str, m: dict, agg: str) -> str:
    return "| " + label + " | " + " | ".join(fmt(m[p][agg][k], k) for k, p in COLS) + " |"


def main() -> None:
    header = ("| method | F1 A | F1 B | Obj Dice A | Obj Dice B | Obj Hausdorff A | "
              "Obj Hausdorff B |\n|---|---|---|---|---|---|---|")
    pub = {m.method: m for m in load_published()}
    for name in MODELS:
        ev = W / f"{name}.eval"
        given = json.loads((ev / "metrics.json").read_text())
        split = json.loads((ev / "metrics_split_gt.json").read_text())
        print(f"\n### {name}\n\n{header}")
        print(row(f"{name} (GT regions split)", split, "pooled"))
        print(row(f"{name} (GT regions split, per-image mean)", split, "per_image"))
        print(row(f"{name} (as given)", given, "pooled"))
        print(row(f"{name} (as given, per-image mean)", given, "per_image"))
        for old in PREVIOUS.get(name, ()):
            prev = json.loads((ROOT / "results" / "previous" / f"{old}.eval" /
                               "metrics_split_gt.json").read_text())
            print(row(f"{old} (GT regions split; previous bundle)", prev, "pooled"))
        v1 = ROOT / "results" / "previous" / f"{name}-v1.json"  # v1's card as bundled
        if v1.is_file():
            card = json.loads(v1.read_text())["model_card"]
            m1 = {p: {"pooled": v} for p, v in card["official_metrics_split_gt"].items()}
            print(row(f"{name} v1 (GT regions split; first bundle)", m1, "pooled"))
            v1_place = next(r for r in rank_many({f"{name} v1": m1}, kinds=RANKED_KINDS)
                            if r.method == f"{name} v1").place
            print(f"(v1: validation tuned object Dice "
                  f"{json.loads(v1.read_text())['validation']['tuned_object_dice']:.3f}, "
                  f"place {v1_place} among the 2015 entries + it)")
        for ref in ("CUMedVision2", "MILD-Net (with TTA)", "Freiburg2"):
            if ref in pub:
                v = pub[ref].values
                print("| " + ref + " | " + " | ".join(
                    fmt(v[c], "object_hausdorff" if "haus" in c else "f1") for c in PUB_COLS) + " |")
        for ref in ("CUMedVision2", "MILD-Net (with TTA)", "Freiburg2"):
            if ref not in pub:
                continue
            v = pub[ref].values
            beats = []
            for (k, p), c in zip(COLS, PUB_COLS, strict=True):
                ours = split[p]["pooled"][k]
                better = ours < v[c] if k == "object_hausdorff" else ours > v[c]
                beats.append(better)
            print(f"\n{name} (split) beats {ref} on {sum(beats)} of 6 figures: "
                  + ", ".join(f"{k} {p}" for (k, p), b in zip(COLS, beats, strict=True) if b))
        # as `glandseg leaderboard METRICS --name NAME` ranks it: the 2015 entries only
        rows = [r for r in rank_many({name: split}, kinds=RANKED_KINDS) if r.ranked]
        ours = next(r for r in rows if r.method == name)
        other = next(r for r in rows if r.method != name and r.place >= ours.place)
        n = len(rows)
        ranks = ", ".join(f"{c} {ours.ranks[c]}" for c in ours.ranks)
        print(f"\nAmong the 2015 entries + {name} ({n} rows), split GT: place {ours.place} by rank "
              f"sum ({ours.rank_sum}; next {other.method} {other.rank_sum}); per-figure ranks: "
              f"{ranks}")
    # per-image scatter, split GT
    per = {}
    for name in MODELS:
        with open(SCATTER[name] / "per_image_split_gt.csv") as f:
            per[name] = {r["stem"]: r for r in csv.DictReader(f)}
    stems = sorted(set(per[MODELS[0]]) & set(per[MODELS[1]]))
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for part, color in (("testA", "tab:blue"), ("testB", "tab:red")):
        s = [x for x in stems if x.startswith(part)]
        ax.scatter([float(per[MODELS[0]][x]["object_dice"]) for x in s],
                   [float(per[MODELS[1]][x]["object_dice"]) for x in s], s=18, c=color,
                   label=part)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("glas-unet v2 object Dice (per image, GT split)")
    ax.set_ylabel("glas-maskrcnn v2 object Dice (per image, GT split)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("one point per test image")
    fig.tight_layout()
    out = ROOT / "results" / "unet_vs_maskrcnn_scatter.png"
    fig.savefig(out, dpi=110)
    better = sum(float(per[MODELS[0]][x]["object_dice"]) > float(per[MODELS[1]][x]["object_dice"])
                 for x in stems)
    print(f"\nper image (split GT): glas-unet v2 has the higher object Dice on {better} of "
          f"{len(stems)} test images; scatter: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
