"""How sure is the blur figure? Patient bootstrap of the validation drop (glas-unet, as
`predict` runs it: ``--deblur auto``). The 18 validation images (6 held-out patients) are
predicted clean and blurred (Gaussian σ 1.5 px) once; patients are resampled with replacement
(2000 draws, seed 0) and the official pooled F1 / object Dice drop is recomputed on each
draw (GT regions split). Prints the observed drop and its 5-95 % interval.

    .venv/bin/python results/robustness/blur_bootstrap.py [--model glas-unet] [--deblur auto|off]
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
from glandseg.infer.predictor import Predictor  # noqa: E402
from glandseg.metrics.score import evaluate_pairs, summarize  # noqa: E402


def pooled(results: list) -> tuple[float, float]:
    m = summarize(results)["other"]["pooled"]
    return m["f1"], m["object_dice"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="glas-unet")
    ap.add_argument("--deblur", choices=("auto", "off"), default="auto")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "glas"))
    ap.add_argument("--draws", type=int, default=2000)
    args = ap.parse_args()
    pred = Predictor.from_name(args.model, device="cpu",
                               deblur=None if args.deblur == "off" else "auto")
    clean, blurred, patient = {}, {}, {}
    for s in samples_of(args.data, "val", None):
        img, truth = read_image(s.image), read_label(s.anno, what="annotation")
        clean[s.name] = evaluate_pairs([(s.name, pred.predict(img), truth)], split_gt=True)[0]
        blurred[s.name] = evaluate_pairs([(s.name, pred.predict(blur(img, 1.5)), truth)],
                                         split_gt=True)[0]
        patient.setdefault(s.patient, []).append(s.name)
    names = list(clean)
    c, b = pooled([clean[n] for n in names]), pooled([blurred[n] for n in names])
    print(f"{args.model} --deblur {args.deblur}: {len(names)} images, {len(patient)} patients")
    print(f"observed: clean F1 {c[0]:.3f} Dice {c[1]:.3f}; blur F1 {b[0]:.3f} Dice {b[1]:.3f}; "
          f"drop F1 {b[0] - c[0]:+.3f} Dice {b[1] - c[1]:+.3f}")
    rng = np.random.default_rng(0)
    pats = list(patient)
    drops = []
    for _ in range(args.draws):
        pick = [n for p in rng.choice(pats, len(pats)) for n in patient[p]]
        pc, pb = pooled([clean[n] for n in pick]), pooled([blurred[n] for n in pick])
        drops.append((pb[0] - pc[0], pb[1] - pc[1]))
    d = np.array(drops)
    for i, k in enumerate(("F1", "object Dice")):
        lo, hi = np.percentile(d[:, i], [5, 95])
        print(f"drop {k}: 5-95 % over patient resamples [{lo:+.3f}, {hi:+.3f}]; "
              f"share of draws within the target (≥ -0.03): {np.mean(d[:, i] >= -0.03):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
