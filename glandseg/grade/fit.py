"""Fit the benign/malignant grader on the GlaS training images, by patient-wise
cross-validation (scikit-learn), and write it as JSON.

Protocol: features of the 85 training images come from the segmentation model's labels and
encoder (:mod:`glandseg.grade.features`; labels and features cached under ``--cache``,
keyed by the model's weight fingerprint). Every candidate (feature set of
:data:`~glandseg.grade.classifier.FEATURE_SETS`: morphometrics, encoder stages, both; L2
strength ``C``) is scored by leave-one-patient-out cross-validation (imputation,
standardisation and the logistic regression refit inside each fold); the candidate with
the best out-of-fold balanced accuracy at 0.5 (then ROC AUC, then the smaller ``C``) is
refit on all training images and saved, with the decision threshold that maximises its
out-of-fold balanced accuracy (:func:`choose_threshold`; ``--threshold`` overrides).
Test A/B are never read here.

    python -m glandseg.grade.fit --data ../shared/glas --model glas-unet \\
        --out glandseg/grade/weights/glas-grade.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glandseg import GlandsegError
from glandseg.data.discover import Sample, discover
from glandseg.data.io import read_image, read_label, write_label, write_text
from glandseg.grade.classifier import (
    CLASSES,
    FEATURE_SETS,
    Grader,
    Segmentation,
    binary_metrics,
)
from glandseg.grade.engine import image_features
from glandseg.grade.features import (
    FEATURES_VERSION,
    MORPHOMETRIC_NAMES,
    has_encoder,
)

log = logging.getLogger(__name__)

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def collect_features(samples: Sequence[Sample], predictor, cache: str | Path | None,
                     progress: bool = True) -> list[dict[str, float]]:
    """Features of each sample (:func:`glandseg.grade.engine.image_features`, encoder
    included when the model has one). With ``cache``, the label images and feature dicts
    are kept in ``cache/<fingerprint[:16]>/labels/`` and ``.../features-v<N>/`` and
    reused."""
    from tqdm import tqdm

    enc = has_encoder(predictor)
    folder = None
    if cache is not None:
        folder = Path(cache) / predictor.fingerprint[:16]
    rows = []
    for s in tqdm(samples, desc="features", unit="img", disable=None if progress else True):
        fpath = (folder / f"features-v{FEATURES_VERSION}" / f"{s.name}.json") if folder else None
        if fpath is not None and fpath.is_file():
            rows.append(json.loads(fpath.read_text(encoding="utf-8")))
            continue
        image = read_image(s.image)
        lpath = folder / "labels" / f"{s.name}.png" if folder else None
        labels = read_label(lpath) if lpath is not None and lpath.is_file() else None
        if labels is None:
            labels = predictor.predict(image)
            if lpath is not None:
                write_label(lpath, labels)
        feats = image_features(predictor, image, labels, encoder=enc)
        if fpath is not None:
            write_text(fpath, json.dumps(feats) + "\n")
        rows.append(feats)
    return rows


def _stage(name: str) -> int:
    return int(name[3:].split("_")[0])  # enc{stage}_{channel}


def feature_names(rows: Sequence[dict], feature_set: str) -> list[str]:
    """The columns of ``feature_set`` (one of :data:`FEATURE_SETS`): ``morphometrics``,
    ``encoder`` (every stage), ``encoder-last`` / ``encoder-last2`` (the deepest one / two
    stages), ``both`` / ``both-last`` (morphometrics + every / the deepest stage)."""
    enc = [k for k in rows[0] if k.startswith("enc")]
    last = max((_stage(k) for k in enc), default=-1)
    sets = {
        "morphometrics": list(MORPHOMETRIC_NAMES),
        "encoder": enc,
        "encoder-last": [k for k in enc if _stage(k) == last],
        "encoder-last2": [k for k in enc if _stage(k) >= last - 1],
        "both": list(MORPHOMETRIC_NAMES) + enc,
        "both-last": list(MORPHOMETRIC_NAMES) + [k for k in enc if _stage(k) == last],
    }
    if feature_set not in sets:
        raise ValueError(f"unknown feature set {feature_set!r}")
    names = sets[feature_set]
    return names if (feature_set == "morphometrics" or enc) else []


def block_weights(names: Sequence[str]) -> np.ndarray:
    """Per-feature divisor ``sqrt(block size)`` so that the morphometric block and the
    encoder block carry equal total variance after standardisation (``float64 (n,)``)."""
    is_enc = np.array([n.startswith("enc") for n in names])
    w = np.ones(len(names))
    for mask in (is_enc, ~is_enc):
        if mask.any() and (~mask).any():
            w[mask] = math.sqrt(mask.sum())
    return w


def _fit_one(X: np.ndarray, y: np.ndarray, names: Sequence[str], C: float):
    """``(mean, scale, coef, intercept)`` of imputation + standardisation + block weights +
    L2 logistic regression (balanced class weights) fit on ``X`` ``(n, d)``, ``y`` bool."""
    from sklearn.linear_model import LogisticRegression

    mean = np.nanmean(np.where(np.isfinite(X), X, np.nan), axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    Xi = np.where(np.isfinite(X), X, mean)
    std = Xi.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    scale = std * block_weights(names)
    Z = (Xi - mean) / scale
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=10000)
    clf.fit(Z, y)
    return mean, scale, clf.coef_[0].astype(np.float64), float(clf.intercept_[0])


def _proba(params, X: np.ndarray) -> np.ndarray:
    mean, scale, coef, intercept = params
    Z = (X - mean) / scale
    Z = np.where(np.isfinite(Z), Z, 0.0)
    return 1.0 / (1.0 + np.exp(-np.clip(Z @ coef + intercept, -500, 500)))


def cross_validate(X: np.ndarray, y: np.ndarray, groups: np.ndarray, names: Sequence[str],
                   C: float) -> np.ndarray:
    """Out-of-fold ``p(malignant)`` ``(n,)`` by leave-one-group-out (one patient out)."""
    from sklearn.model_selection import LeaveOneGroupOut

    p = np.full(len(y), np.nan)
    for tr, te in LeaveOneGroupOut().split(X, y, groups):
        if len(set(y[tr].tolist())) < 2:  # a fold without both grades cannot be fit
            p[te] = float(y[tr].mean())
            continue
        p[te] = _proba(_fit_one(X[tr], y[tr], names, C), X[te])
    return p


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def choose_threshold(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The decision threshold on ``p(malignant)`` ``(n,)`` that maximises the balanced
    accuracy of the out-of-fold probabilities ``p`` against ``y`` (bool): candidates are
    the midpoints (in log-odds) between consecutive distinct probabilities; among equally
    good ones the widest gap in log-odds wins, then the one nearest 0.5. Returns
    ``(threshold, balanced accuracy there)``. A linear model's 0.5 need not be right
    for images it did not see: this is the cross-validated choice."""
    lz = _logit(np.asarray(p, dtype=np.float64))
    z = np.unique(lz)
    if len(z) < 2:
        return 0.5, 0.5
    mids, gaps = (z[:-1] + z[1:]) / 2, np.diff(z)
    y = np.asarray(y, dtype=bool)

    def bacc(t: float) -> float:
        pred = lz >= t
        return 0.5 * (pred[y].mean() + (~pred[~y]).mean())

    scores = np.array([bacc(t) for t in mids])
    best = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0, atol=1e-12))
    i = max(best, key=lambda k: (round(float(gaps[k]), 9), -abs(float(mids[k]))))
    return float(1 / (1 + np.exp(-mids[i]))), float(scores[i])


def select(rows: Sequence[dict], samples: Sequence[Sample],
           feature_sets: Sequence[str] = FEATURE_SETS,
           c_grid: Sequence[float] = C_GRID) -> tuple[list[dict], dict]:
    """Cross-validate every (feature set, C); returns ``(table, best)``: one dict per
    candidate with its out-of-fold ``binary_metrics`` (``feature_set``, ``C``,
    ``balanced_accuracy``, ``accuracy``, ``roc_auc``) and its out-of-fold probabilities
    (``oof``, ``float64 (n,)``), and the chosen one."""
    y = np.array([s.grade == CLASSES[1] for s in samples])
    groups = np.array([s.patient if s.patient is not None else -i - 1
                       for i, s in enumerate(samples)])
    table = []
    for fs in feature_sets:
        names = feature_names(rows, fs)
        if not names:
            log.info("feature set %s is empty for this model; skipped", fs)
            continue
        X = np.array([[r[n] for n in names] for r in rows], dtype=np.float64)
        for C in c_grid:
            p = cross_validate(X, y, groups, names, C)
            m = binary_metrics([s.grade for s in samples], p.tolist())
            table.append({"feature_set": fs, "C": C, "n_features": len(names),
                          "balanced_accuracy": m["balanced_accuracy"],
                          "accuracy": m["accuracy"], "roc_auc": m["roc_auc"],
                          "confusion": m["confusion"], "oof": p})
    if not table:
        raise GlandsegError("no feature set to cross-validate")
    best = max(table, key=lambda r: (round(r["balanced_accuracy"], 10),
                                     round(r["roc_auc"], 10), -r["C"]))
    return table, best


def fit_grader(data: str | Path, model: str = "glas-unet", cache: str | Path | None = None,
               feature_sets: Sequence[str] = FEATURE_SETS, c_grid: Sequence[float] = C_GRID,
               device: str = "auto", progress: bool = True,
               threshold: float | None = None) -> Grader:
    """Fit a grader on the graded training images of the GlaS folder ``data`` (see the
    module doc); ``model``: the segmentation model (name, run folder or file);
    ``threshold``: the decision threshold (``None``: chosen by cross-validation,
    :func:`choose_threshold`)."""
    import sklearn

    from glandseg.infer.predictor import Predictor

    t0 = time.time()
    samples = [s for s in discover(data, splits=("train",)) if s.grade in CLASSES]
    if len({s.grade for s in samples}) < 2:
        raise GlandsegError(f"{data}: the training images need benign and malignant grades "
                            "(Grade.csv) to fit a grader")
    pred = Predictor.from_name(model, device=device)
    fp = pred.fingerprint
    rows = collect_features(samples, pred, cache, progress)
    table, best = select(rows, samples, feature_sets, c_grid)
    names = feature_names(rows, best["feature_set"])
    X = np.array([[r[n] for n in names] for r in rows], dtype=np.float64)
    y = np.array([s.grade == CLASSES[1] for s in samples])
    mean, scale, coef, intercept = _fit_one(X, y, names, best["C"])
    if threshold is None:  # chosen on the chosen candidate's out-of-fold probabilities
        threshold, oof_bacc = choose_threshold(best["oof"], y)
        how = ("chosen on the out-of-fold probabilities of the chosen candidate (leave-one-"
               "patient-out): the widest log-odds gap of maximal balanced accuracy")
    else:
        oof_bacc, how = None, "given"
    n_mal = int(y.sum())
    fit = {
        "data": "GlaS training part: graded images, Grade.csv",
        "n_images": len(samples), "n_malignant": n_mal, "n_benign": len(samples) - n_mal,
        "patients": sorted({int(s.patient) for s in samples if s.patient is not None}),
        "train_majority": CLASSES[1] if n_mal * 2 > len(samples) else CLASSES[0],
        "model": "L2 logistic regression, balanced class weights (scikit-learn "
                 f"{sklearn.__version__}); NaN features imputed with the training mean",
        "cv": "leave-one-patient-out on the training images; choice by balanced accuracy",
        "chosen": {k: best[k] for k in ("feature_set", "C", "balanced_accuracy",
                                        "accuracy", "roc_auc")},
        "candidates": [{k: r[k] for k in ("feature_set", "C", "n_features",
                                          "balanced_accuracy", "accuracy", "roc_auc")}
                       for r in table],
        "threshold": {"value": threshold, "how": how,
                      "out_of_fold_balanced_accuracy": oof_bacc},
        "seconds": round(time.time() - t0, 1),
    }
    return Grader(features=tuple(names), mean=mean, scale=scale, coef=coef,
                  intercept=intercept, segmentation=Segmentation(str(model), fp),
                  feature_set=best["feature_set"], threshold=threshold, fit=fit)


def _cv_table(fit: dict) -> str:
    lines = ["feature set     C       bal.acc  acc    AUC"]
    for r in fit["candidates"]:
        lines.append(f"{r['feature_set']:<15} {r['C']:<7g} {r['balanced_accuracy']:.3f}    "
                     f"{r['accuracy']:.3f}  {r['roc_auc']:.3f}")
    return "\n".join(lines)


def _threshold_arg(text: str) -> float | None:
    """``--threshold``: ``auto`` (``None``) or a probability in (0, 1)."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a number in (0, 1), got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m glandseg.grade.fit``: fit and save a grader (see the module doc)."""
    ap = argparse.ArgumentParser(prog="python -m glandseg.grade.fit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="GlaS folder (training images + Grade.csv)")
    ap.add_argument("--model", default="glas-unet", help="segmentation model (default glas-unet)")
    ap.add_argument("--out", required=True, help="grader JSON to write")
    ap.add_argument("--cache", default="runs/grade-cache",
                    help="folder for cached labels/features (default runs/grade-cache)")
    ap.add_argument("--feature-sets", default=",".join(FEATURE_SETS),
                    help="comma-separated candidates (default: all)")
    ap.add_argument("--threshold", default=None, type=_threshold_arg, metavar="auto|P",
                    help="decision threshold on p(malignant): auto (chosen on the out-of-fold "
                         "probabilities, default) or a number in (0, 1)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sets = [s for s in args.feature_sets.split(",") if s]
    bad = [s for s in sets if s not in FEATURE_SETS]
    if bad:
        ap.error(f"unknown feature set(s) {bad}; choose from {FEATURE_SETS}")
    try:
        grader = fit_grader(args.data, args.model, args.cache or None, sets, device=args.device,
                            threshold=args.threshold)
    except GlandsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    grader.save(args.out)
    print(_cv_table(grader.fit))
    c = grader.fit["chosen"]
    t = grader.fit["threshold"]
    print(f"chosen: {c['feature_set']}, C={c['C']:g} (leave-one-patient-out balanced accuracy "
          f"{c['balanced_accuracy']:.3f} at 0.5, AUC {c['roc_auc']:.3f}); threshold "
          f"{t['value']:.3f} ({t['how'].split(':')[0]}) → {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
