"""The benign/malignant grader: a standardised logistic regression stored as JSON.

A grader file (``glas-grade.json``, format ``glandseg-grader`` version 1) holds everything
needed to grade an image, nothing pickled:

- ``features``: feature names (:mod:`glandseg.grade.features`), in order;
- ``mean`` / ``scale``: standardisation ``z = (x - mean) / scale`` (a NaN feature, e.g. a
  shape statistic of an image without glands, becomes ``z = 0``, the training mean);
- ``coef`` / ``intercept``: ``p(malignant) = 1 / (1 + exp(-(coef · z + intercept)))``;
- ``threshold``: ``p >= threshold`` → ``"malignant"``, else ``"benign"``;
- ``segmentation``: the model whose labels (and encoder) the features come from: its name
  (``model``), the SHA-256 of its loaded weights (``fingerprint``,
  :func:`glandseg.grade.features.model_fingerprint`); grades are only computed with exactly
  those weights;
- ``feature_set``, ``fit`` (how it was fit, cross-validation results): for people.

Reading is checked like a model config: every problem is a one-line
:class:`~glandseg.GlandsegError` naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glandseg import GlandsegError
from glandseg.data.io import write_text

FORMAT = "glandseg-grader"
VERSION = 1
CLASSES = ("benign", "malignant")
#: Candidate feature sets: gland morphometrics; the pooled encoder features of every stage;
#: of the last stage only (stride 32: tissue architecture, least stain-bound) or of the last
#: two; morphometrics with all / the last stage.
FEATURE_SETS = ("morphometrics", "encoder", "encoder-last", "encoder-last2", "both",
                "both-last")
#: The bundled grader (package data).
BUNDLED_PATH = Path(__file__).parent / "weights" / "glas-grade.json"


@dataclass(frozen=True)
class Segmentation:
    """The segmentation model a grader's features come from: ``model`` (a bundled name,
    run folder or file, as ``--model`` takes) and ``fingerprint`` (SHA-256 of its weights)."""

    model: str
    fingerprint: str


@dataclass(frozen=True)
class Grader:
    """A fitted grader (see the module doc). Arrays are ``float64 (n_features,)``."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    segmentation: Segmentation
    feature_set: str = "morphometrics"
    threshold: float = 0.5
    fit: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.features)
        where = self.source or "grader"
        if n == 0:
            raise GlandsegError(f"{where}: a grader needs at least one feature")
        if len(set(self.features)) != n:
            raise GlandsegError(f"{where}: feature names repeat")
        for name in ("mean", "scale", "coef"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n,):
                raise GlandsegError(f"{where}: {name} has {arr.size} values for {n} features; "
                                    "refit the grader (python -m glandseg.grade.fit)")
            if not np.all(np.isfinite(arr)):
                raise GlandsegError(f"{where}: {name} has non-finite values; refit the grader")
            object.__setattr__(self, name, arr)
        if not np.all(self.scale > 0):
            raise GlandsegError(f"{where}: scale must be positive; refit the grader")
        if not math.isfinite(self.intercept):
            raise GlandsegError(f"{where}: intercept must be finite; refit the grader")
        if not 0.0 < self.threshold < 1.0:
            raise GlandsegError(f"{where}: threshold must be in (0, 1), got {self.threshold}")
        if self.feature_set not in FEATURE_SETS:
            raise GlandsegError(f"{where}: feature_set must be one of {', '.join(FEATURE_SETS)},"
                                f" got {self.feature_set!r}")

    @property
    def uses_encoder(self) -> bool:
        """Whether any feature is an encoder feature (``enc*``)."""
        return any(f.startswith("enc") for f in self.features)

    @property
    def uses_morphometrics(self) -> bool:
        """Whether any feature is a gland morphometric (needs the segmentation)."""
        return not all(f.startswith("enc") for f in self.features)

    def vector(self, feats: dict[str, float]) -> np.ndarray:
        """The feature dict of one image → ``float64 (n_features,)`` in the grader's order
        (a missing feature is a ``ValueError``; NaN is kept)."""
        missing = [f for f in self.features if f not in feats]
        if missing:
            raise ValueError(f"features missing: {', '.join(missing[:5])}")
        return np.array([feats[f] for f in self.features], dtype=np.float64)

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Logits ``float64 (n,)`` of feature rows ``x`` ``(n, n_features)`` (or one row)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        z = (x - self.mean) / self.scale
        z = np.where(np.isfinite(z), z, 0.0)
        return z @ self.coef + self.intercept

    def probability(self, x: np.ndarray) -> np.ndarray:
        """``p(malignant)`` ``float64 (n,)`` of feature rows ``x`` ``(n, n_features)``."""
        d = np.clip(self.decision(x), -500, 500)
        return 1.0 / (1.0 + np.exp(-d))

    def label(self, p: float) -> str:
        """``"malignant"`` if ``p >= threshold`` else ``"benign"``."""
        return CLASSES[1] if p >= self.threshold else CLASSES[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "classes": list(CLASSES),
            "feature_set": self.feature_set, "features": list(self.features),
            "mean": self.mean.tolist(), "scale": self.scale.tolist(),
            "coef": self.coef.tolist(), "intercept": float(self.intercept),
            "threshold": float(self.threshold),
            "segmentation": {"model": self.segmentation.model,
                             "fingerprint": self.segmentation.fingerprint},
            "fit": self.fit,
        }

    def save(self, path: str | Path) -> None:
        """Write the grader as JSON (atomically)."""
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: Any, source: str = "grader") -> Grader:
        """Check and build a grader from its JSON object (errors name ``source``)."""
        if not isinstance(d, dict):
            raise GlandsegError(f"{source}: a grader must be a JSON object")
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise GlandsegError(f"{source}: not a glandseg grader (format {FORMAT!r} version "
                                f"{VERSION}); give a file written by python -m glandseg.grade.fit")
        if list(d.get("classes", CLASSES)) != list(CLASSES):
            raise GlandsegError(f"{source}: classes must be {list(CLASSES)}")
        seg = d.get("segmentation")
        if not (isinstance(seg, dict) and isinstance(seg.get("model"), str)
                and isinstance(seg.get("fingerprint"), str)):
            raise GlandsegError(f"{source}: 'segmentation' must name the model and its "
                                "fingerprint; refit the grader")
        known = {"format", "version", "classes", "feature_set", "features", "mean", "scale",
                 "coef", "intercept", "threshold", "segmentation", "fit"}
        extra = sorted(set(d) - known)
        if extra:
            raise GlandsegError(f"{source}: unknown key(s) {', '.join(extra)}")
        try:
            return cls(
                features=tuple(str(f) for f in d["features"]),
                mean=np.asarray(d["mean"], dtype=np.float64),
                scale=np.asarray(d["scale"], dtype=np.float64),
                coef=np.asarray(d["coef"], dtype=np.float64),
                intercept=float(d["intercept"]),
                segmentation=Segmentation(seg["model"], seg["fingerprint"]),
                feature_set=str(d.get("feature_set", "morphometrics")),
                threshold=float(d.get("threshold", 0.5)),
                fit=dict(d.get("fit") or {}),
                source=source,
            )
        except KeyError as exc:
            raise GlandsegError(f"{source}: missing key {exc.args[0]!r}; refit the grader") from exc
        except (TypeError, ValueError) as exc:
            raise GlandsegError(f"{source}: malformed grader ({exc})") from exc


def load_grader(path: str | Path | None = None) -> Grader:
    """Read a grader JSON (default: the bundled :data:`BUNDLED_PATH`)."""
    path = Path(path) if path is not None else BUNDLED_PATH
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GlandsegError(f"{path}: grader not found; give a grader JSON written by "
                            "python -m glandseg.grade.fit") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlandsegError(f"{path}: unreadable grader ({' '.join(str(exc).split())[:150]})"
                            ) from exc
    return Grader.from_dict(d, str(path))


# ------------------------------------------------------------------------------ metrics


def binary_metrics(truth: list[str], prob: list[float], threshold: float = 0.5,
                   majority: str | None = None) -> dict:
    """Grading metrics of ``truth`` (``"benign"``/``"malignant"``) against ``p(malignant)``.

    Returns ``n``, ``accuracy``, ``balanced_accuracy`` (mean of the two recalls),
    ``roc_auc`` (Mann-Whitney, ties count half; NaN with one class), ``confusion``
    (``{"benign": {"benign": n, "malignant": n}, "malignant": {...}}``, truth → predicted)
    and the majority-class baseline (``majority``: always predicting the class ``majority``,
    by default the commoner class of ``truth``; its ``accuracy`` and ``balanced_accuracy``,
    0.5 when both classes are present).
    """
    y = np.array([t == CLASSES[1] for t in truth], dtype=bool)
    p = np.asarray(prob, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} grades for {p.size} probabilities")
    pred = p >= threshold
    conf = {c: {d: 0 for d in CLASSES} for c in CLASSES}
    for t, q in zip(y, pred, strict=True):
        conf[CLASSES[int(t)]][CLASSES[int(q)]] += 1
    recalls = [float(np.mean(pred[y == v] == v)) for v in (False, True) if np.any(y == v)]
    pos, neg = p[y], p[~y]
    if pos.size and neg.size:
        gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        auc = float(gt / (pos.size * neg.size))
    else:
        auc = math.nan
    n_mal = int(y.sum())
    maj = majority or (CLASSES[1] if n_mal * 2 > y.size else CLASSES[0])
    if maj not in CLASSES:
        raise ValueError(f"majority must be one of {CLASSES}, got {maj!r}")
    n = int(y.size)
    # the baseline's recalls: 1 for the majority class, 0 for the other (if present)
    maj_recalls = [float(c == maj) for c, v in zip(CLASSES, (False, True), strict=True)
                   if np.any(y == v)]
    return {
        "n": n,
        "accuracy": float(np.mean(pred == y)) if n else math.nan,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "roc_auc": auc,
        "confusion": conf,
        "majority": {"class": maj,
                     "accuracy": ((n_mal if maj == CLASSES[1] else n - n_mal) / n) if n
                     else math.nan,
                     "balanced_accuracy": float(np.mean(maj_recalls)) if n else math.nan},
    }
