"""A patient-grouped estimate of benign/malignant grading over all 165 GlaS images.

GlaS train and test share patients (Grade.csv: 8 of the 9 Test A patients and all 5 Test B
patients also have training images), so scoring a grader fit on the training images on
Test A/B is not a measure on unseen patients. This script holds out one *patient* at a time
(16 folds over all 165 images, train + Test A + Test B) and, inside each fold, chooses the
L2 strength C and the decision threshold by an inner leave-one-patient-out over the other
15 patients (the same procedure as ``glandseg.grade.fit``: :func:`cross_validate`,
:func:`choose_threshold`), then predicts the held-out patient's images. The grader never
sees the held-out patient.

What still leaks, exactly: the features come from the gland labels (and, for the encoder
set, the encoder) of the bundled glas-unet, which was trained on the training images of 9
patients (1, 2, 3, 7, 8, 9, 10, 13, 16) and chosen on those of 6 others (4, 5, 6, 11, 14,
15). Only patient 12 (Test A only) was never seen by it. The morphometric features use the
network only through its gland masks; the encoder features are the network's own
activations, so they leak more.

    .venv/bin/python results/grading/patient_grouped.py [--data ../shared/glas]

Writes ``results/grading/patient_grouped.json`` (per-image out-of-patient probabilities,
per-fold C and threshold, the summary) and ``patient_grouped.txt`` (the summary). CPU: 4
CPU-minutes (7.5 minutes on a shared 2-core machine; the 165 images' labels and features are
cached under ``runs/grade-cache``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from glandseg.data.discover import discover
from glandseg.data.io import write_text
from glandseg.grade.classifier import CLASSES, binary_metrics
from glandseg.grade.fit import (
    C_GRID,
    choose_threshold,
    collect_features,
    cross_validate,
    feature_names,
)
from glandseg.infer.predictor import Predictor

HERE = Path(__file__).resolve().parent
#: Feature sets estimated: the morphometrics (headline: least leak) and the bundled
#: grader's set (the encoder's last stage).
SETS = ("morphometrics", "encoder-last")


def nested_lopo(X: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str]) -> dict:
    """Out-of-patient ``p(malignant)`` (``float64 (n,)``) with C and the threshold chosen
    inside each outer fold by an inner leave-one-patient-out; per-fold choices."""
    p = np.full(len(y), np.nan)
    pred = np.zeros(len(y), dtype=bool)
    folds = []
    for g in np.unique(groups):
        out = groups == g
        inner = []
        for C in C_GRID:
            q = cross_validate(X[~out], y[~out], groups[~out], names, C)
            m = binary_metrics([CLASSES[int(t)] for t in y[~out]], q.tolist())
            inner.append((round(m["balanced_accuracy"], 10), round(m["roc_auc"], 10), -C, q))
        bacc, auc, negc, q = max(inner, key=lambda r: r[:3])
        thr, _ = choose_threshold(q, y[~out])
        # the held-out patient's images, predicted by a fit on all the other patients
        p[out] = cross_validate(X, y, np.where(out, 0, 1), names, -negc)[out]
        pred[out] = p[out] >= thr
        folds.append({"patient": int(g), "images": int(out.sum()), "C": -negc,
                      "threshold": thr, "inner_balanced_accuracy": bacc})
    return {"p": p, "pred_at_threshold": pred, "folds": folds}


def summarize(truth: list[str], p: np.ndarray, pred: np.ndarray, parts: list[str]) -> dict:
    """Binary metrics at 0.5 and at the per-fold thresholds, overall and per part."""
    y = np.array([t == CLASSES[1] for t in truth])

    def bacc(mask: np.ndarray) -> float:
        rec = [float(np.mean(pred[mask & (y == v)] == v)) for v in (False, True)
               if np.any(mask & (y == v))]
        return float(np.mean(rec))

    out = {}
    for part in ("all", "train", "testA", "testB"):
        mask = np.ones(len(y), bool) if part == "all" else np.array([q == part for q in parts])
        m = binary_metrics([t for t, k in zip(truth, mask, strict=True) if k], p[mask].tolist())
        out[part] = {"n": int(mask.sum()), "at_0.5": {k: m[k] for k in
                                                      ("accuracy", "balanced_accuracy")},
                     "roc_auc": m["roc_auc"],
                     "at_fold_threshold": {"accuracy": float(np.mean(pred[mask] == y[mask])),
                                           "balanced_accuracy": bacc(mask)},
                     "confusion_at_0.5": m["confusion"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/glas")
    ap.add_argument("--cache", default="runs/grade-cache")
    a = ap.parse_args()
    samples = [s for s in discover(a.data) if s.grade is not None and s.patient is not None]
    parts = [s.split for s in samples]
    pats = {k: {s.patient for s in samples if s.split == k} for k in ("train", "testA", "testB")}
    overlap = {k: sorted(pats[k] & pats["train"]) for k in ("testA", "testB")}
    pred = Predictor.from_name("glas-unet", device="cpu", deblur="auto")
    rows = collect_features(samples, pred, a.cache, progress=False)
    truth = [s.grade for s in samples]
    y = np.array([t == CLASSES[1] for t in truth])
    groups = np.array([s.patient for s in samples])
    result = {
        "images": len(samples), "patients": len(set(groups.tolist())),
        "patients_per_part": {k: sorted(v) for k, v in pats.items()},
        "test_patients_also_in_train": overlap,
        "segmentation_model": {"name": "glas-unet", "fingerprint": pred.fingerprint},
        "leak": "features from glas-unet, trained on the training images of patients 1, 2, 3, "
                "7, 8, 9, 10, 13, 16 and chosen on those of 4, 5, 6, 11, 14, 15; only patient "
                "12 unseen by it. The grader (C, threshold, weights) never sees the held-out "
                "patient.",
        "sets": {},
    }
    lines = [f"{len(samples)} images, {result['patients']} patients; test patients also in "
             f"train: Test A {len(overlap['testA'])} of {len(pats['testA'])}, Test B "
             f"{len(overlap['testB'])} of {len(pats['testB'])}",
             "leave-one-patient-out over all images, C and threshold chosen inside each fold",
             ""]
    for fs in SETS:
        names = feature_names(rows, fs)
        X = np.array([[r[n] for n in names] for r in rows], dtype=np.float64)
        r = nested_lopo(X, y, groups, names)
        summ = summarize(truth, r["p"], r["pred_at_threshold"], parts)
        result["sets"][fs] = {"n_features": len(names), "summary": summ, "folds": r["folds"],
                              "per_image": [{"image": s.name, "patient": s.patient,
                                             "truth": s.grade, "p_malignant": float(q)}
                                            for s, q in zip(samples, r["p"], strict=True)]}
        lines.append(f"{fs} ({len(names)} features)")
        lines.append("  part    n   bal.acc@0.5  acc@0.5  bal.acc@fold-thr  ROC AUC")
        for part, m in summ.items():
            lines.append(f"  {part:<6} {m['n']:>3}  {m['at_0.5']['balanced_accuracy']:>11.3f}"
                         f"  {m['at_0.5']['accuracy']:>7.3f}"
                         f"  {m['at_fold_threshold']['balanced_accuracy']:>16.3f}"
                         f"  {m['roc_auc']:>7.3f}")
        lines.append("")
    write_text(HERE / "patient_grouped.json", json.dumps(result, indent=1) + "\n")
    write_text(HERE / "patient_grouped.txt", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
