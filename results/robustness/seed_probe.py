"""Probe (validation only, not adopted): watershed seeds from ``interior - a * boundary``
instead of ``interior`` (the contour post-processing otherwise unchanged: the model's
foreground threshold, min_area, min_seed_area), for a grid of ``a`` and seed thresholds,
on the clean and the blurred (sigma 1.5 px) validation copies. Official pooled F1 / object
Dice (TP, FP, FN), GT regions split. Read while looking at the blurred copies: a lead for
later work, not a tuned result.

    .venv/bin/python results/robustness/seed_probe.py MODEL [--data ../shared/glas]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_robustness import blur, samples_of  # noqa: E402

from glandseg.data.io import read_image, read_label  # noqa: E402
from glandseg.infer.postprocess import contour_to_labels  # noqa: E402
from glandseg.infer.predictor import Predictor  # noqa: E402
from glandseg.metrics.score import score_pairs  # noqa: E402


def labels(probs: np.ndarray, seed_t: float, fg_t: float, min_area: int, min_seed: int,
           a: float) -> np.ndarray:
    """:func:`contour_to_labels` with the seed (and watershed) map ``interior - a *
    boundary``: the stack is rewritten so that its interior channel is that map while
    interior + boundary (the foreground) is unchanged."""
    shifted = np.stack([probs[0], probs[1] - a * probs[2], (1 + a) * probs[2]])
    return contour_to_labels(shifted, seed_t, fg_t, min_area, min_seed, fill_holes=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "glas"))
    args = ap.parse_args()
    pred = Predictor.from_name(args.model, device="cpu")
    pp = pred.model_config.postprocess
    clean, blurred = [], []
    for s in samples_of(args.data, "val", None):
        img, t = read_image(s.image), read_label(s.anno, what="annotation")
        clean.append((s.name, pred.predict_proba(img), t))
        blurred.append((s.name, pred.predict_proba(blur(img, 1.5)), t))
    for a in (0, 0.5, 1, 2, 4):
        for seed_t in (0.3, 0.5, 0.6, 0.7):
            out = []
            for cached in (clean, blurred):
                items = [(n, labels(p, seed_t, pp.foreground_threshold, pp.min_area,
                                    pp.min_seed_area, a), t) for n, p, t in cached]
                m = next(iter(score_pairs(items, split_gt=True).values()))["pooled"]
                out.append(f"{m['f1']:.3f}/{m['object_dice']:.3f} ({m['tp']},{m['fp']},{m['fn']})")
            print("a", a, "it", seed_t, "clean", out[0], "blur", out[1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
