"""Does post-processing explain the blur drop? Validation only (18 images, patients 4, 5, 6,
11, 14, 15). For MODEL, probabilities of the clean and the blurred (sigma 1.5 px) copies are
computed once; the post-processing grid of training (glandseg.train.tune.GRIDS) is searched on
clean, on blur and on both; each choice is scored on clean and on blur (official pooled F1 and
object Dice, GT regions split), and per-image object Dice under blur is listed beside clean.

    .venv/bin/python results/robustness/blur_postprocess.py MODEL [--data ../shared/glas]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_robustness import blur, samples_of  # noqa: E402

from glandseg.data.io import read_image, read_label  # noqa: E402
from glandseg.infer.predictor import Predictor  # noqa: E402
from glandseg.metrics.gridsearch import grid_search  # noqa: E402
from glandseg.metrics.score import score_pairs  # noqa: E402
from glandseg.train.tune import GRIDS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "glas"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pred = Predictor.from_name(args.model, device="cpu")
    samples = samples_of(args.data, "val", None)
    clean, blurred = [], []
    for s in samples:
        img, truth = read_image(s.image), read_label(s.anno, what="annotation")
        clean.append((s.name, pred.predict_proba(img), truth))
        blurred.append((s.name, pred.predict_proba(blur(img, 1.5)), truth))

    def to_labels(p, _shape, params):
        return pred.postprocess(p, params)

    def score(cached, params):
        items = [(n, to_labels(p, t.shape, params), t) for n, p, t in cached]
        res = next(iter(score_pairs(items, split_gt=True).values()))
        return res

    grid = GRIDS[pred.task]
    base = dict(pred.model_config.postprocess.as_dict())
    choices = {"model's own": base}
    for tag, cached in (("clean", clean), ("blur", blurred), ("clean+blur", clean + blurred)):
        choices[f"tuned on {tag}"], _ = grid_search(grid, cached, to_labels, base)
    out = {"model": args.model, "images": [s.name for s in samples], "rows": []}
    print("| post-processing | params | F1 clean | Dice clean | F1 blur | Dice blur |")
    print("|---|---|---|---|---|---|")
    for tag, params in choices.items():
        c, b = score(clean, params), score(blurred, params)
        row = {"choice": tag, "params": params,
               "clean": {k: c["pooled"][k] for k in ("f1", "object_dice")},
               "blur": {k: b["pooled"][k] for k in ("f1", "object_dice")}}
        out["rows"].append(row)
        short = {k: v for k, v in params.items() if k in grid and len(grid[k]) > 1}
        print(f"| {tag} | {short} | {row['clean']['f1']:.3f} | {row['clean']['object_dice']:.3f} "
              f"| {row['blur']['f1']:.3f} | {row['blur']['object_dice']:.3f} |")
    per = []
    for ic, ib in zip(clean, blurred, strict=True):
        c, b = score([ic], base)["pooled"], score([ib], base)["pooled"]
        per.append({"image": ic[0], "dice_clean": round(c["object_dice"], 3),
                    "dice_blur": round(b["object_dice"], 3), "f1_clean": round(c["f1"], 3),
                    "f1_blur": round(b["f1"], 3), "tp_fp_fn_clean": (c["tp"], c["fp"], c["fn"]),
                    "tp_fp_fn_blur": (b["tp"], b["fp"], b["fn"])})
    out["per_image"] = per
    for r in sorted(per, key=lambda r: r["dice_blur"] - r["dice_clean"])[:6]:
        print(r)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
