"""Grades in the outputs: the grading step of ``glandseg evaluate`` and ``glandseg grade``.

- :func:`open_grader`: the bundled (or given) grader ready to grade images, or ``None``
  with a warning when it cannot grade (e.g. it was fit on other segmentation weights);
- :class:`GradeLog`: collects per-image grades during an evaluation and writes
  ``grades.csv`` (image, part, truth, grade, grade_probability, correct) and
  ``grading.json`` (accuracy, balanced accuracy, ROC AUC, confusion matrix per test part
  and for all images together, beside the majority-class baseline; a metric that is not
  defined, e.g. ROC AUC of a part with one class, is ``null``);
- :func:`grades_csv`: the text of ``glandseg grade``'s ``grades.csv`` (image, grade,
  grade_probability).

``grade_probability`` is P(malignant), the same column name as in ``predict``'s
``images.csv``; image names that a spreadsheet would read as formulas are prefixed with
``'`` (:func:`glandseg.data.io.csv_safe`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glandseg import GlandsegError
from glandseg.data.io import csv_quoting, csv_safe, write_text

log = logging.getLogger(__name__)

GRADES_CSV = "grades.csv"
GRADING_JSON = "grading.json"
#: The P(malignant) column of ``grades.csv`` (as in ``images.csv``).
PROBABILITY = "grade_probability"


def open_grader(predictor=None, grader: str | Path | None = None, device: str = "auto"):
    """An :class:`~glandseg.grade.engine.ImageGrader` (``grader``: a grader JSON, ``None``
    = bundled) reusing ``predictor`` when it has the grader's segmentation weights; ``None``
    (warning logged) when the grader cannot be used."""
    from glandseg.grade.engine import ImageGrader

    try:
        return ImageGrader.load(grader, predictor, device=device)
    except GlandsegError as exc:
        log.warning("no grades: %s", exc)
        return None


@dataclass
class GradeLog:
    """Per-image grades of an evaluation (see the module doc). ``grader``: an
    :class:`~glandseg.grade.engine.ImageGrader`; ``predictor``: the evaluated model (its
    labels are reused when the grader was fit on it)."""

    grader: Any
    predictor: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reuse = self.grader.shares(self.predictor)

    @classmethod
    def open(cls, predictor=None, grader: str | Path | None = None) -> GradeLog | None:
        """A log grading with :func:`open_grader` (``None`` if it cannot grade)."""
        g = open_grader(predictor, grader, device=getattr(predictor, "device", "auto"))
        return None if g is None else cls(g, predictor)

    def add(self, stem: str, part: str, truth: str | None, image, labels=None) -> None:
        """Grade one image ``uint8 (H, W, 3)``; ``labels``: the evaluated model's labels
        ``(H, W)`` (0 = background), reused if the grader was fit on that model."""
        g = self.grader.grade(image, labels if self._reuse else None)
        self.rows.append({"image": stem, "part": part, "truth": truth or "",
                          "grade": g.grade, PROBABILITY: g.probability,
                          "correct": "" if not truth else int(truth == g.grade)})

    def summary(self) -> dict:
        """``grading.json``'s content: per part and ``all`` :func:`binary_metrics`."""
        from glandseg.grade.classifier import binary_metrics

        gr = self.grader.grader
        majority = gr.fit.get("train_majority")
        rows = [r for r in self.rows if r["truth"] in ("benign", "malignant")]
        parts: dict[str, Any] = {}
        for part in sorted({r["part"] for r in rows}):
            rs = [r for r in rows if r["part"] == part]
            parts[part] = binary_metrics([r["truth"] for r in rs],
                                         [r[PROBABILITY] for r in rs], gr.threshold, majority)
        if len(parts) > 1:
            parts["all"] = binary_metrics([r["truth"] for r in rows],
                                          [r[PROBABILITY] for r in rows], gr.threshold,
                                          majority)
        parts = _no_nan(parts)
        return {
            "grader": {"feature_set": gr.feature_set, "features": len(gr.features),
                       "segmentation": gr.segmentation.model,
                       "fingerprint": gr.segmentation.fingerprint,
                       "n_train": gr.fit.get("n_images"), "cv_chosen": gr.fit.get("chosen"),
                       "source": gr.source},
            "threshold": gr.threshold,
            "parts": parts,
        }

    def write(self, out: str | Path) -> dict:
        """Write ``grades.csv`` and ``grading.json`` into ``out``; returns the summary."""
        out = Path(out)
        buf = io.StringIO()
        cols = ["image", "part", "truth", "grade", PROBABILITY, "correct"]
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n",
                           quoting=csv_quoting(r["image"] for r in self.rows))
        w.writeheader()
        for r in self.rows:
            w.writerow({**r, "image": csv_safe(r["image"]),
                        PROBABILITY: f"{r[PROBABILITY]:.6f}"})
        write_text(out / GRADES_CSV, buf.getvalue())
        summary = self.summary()
        write_text(out / GRADING_JSON, json.dumps(summary, indent=2) + "\n")
        return summary


def grades_csv(rows: Sequence[tuple[str, str, float]]) -> str:
    """``grades.csv`` of ``glandseg grade``: ``image, grade, grade_probability``
    (P(malignant)); image names made inert for spreadsheets (:func:`csv_safe`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv_quoting(r[0] for r in rows))
    w.writerow(["image", "grade", PROBABILITY])
    for stem, grade, p in rows:
        w.writerow([csv_safe(stem), grade, f"{p:.6f}"])
    return buf.getvalue()


def _no_nan(obj: Any) -> Any:
    """``obj`` with every NaN float (an undefined metric) replaced by ``None`` (JSON
    ``null``: JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _metric(v: Any, width: int, why: str = "n/a") -> str:
    """A metric right-aligned in ``width`` columns, or ``why`` when it is undefined."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{why:>{width}}"
    return f"{v:>{width}.3f}"


def format_grading(summary: dict) -> str:
    """A plain-text table of :meth:`GradeLog.summary` (printed by ``glandseg evaluate``)."""
    one_class = "n/a (one class)"
    wide = any(m.get("roc_auc") is None or m["roc_auc"] != m["roc_auc"]
               for m in summary["parts"].values())
    auc_w = len(one_class) if wide else 7
    lines = [f"part    images  accuracy  bal.acc  {'ROC AUC':<{auc_w}}   majority: class     "
             "acc  bal.acc"]
    for part, m in summary["parts"].items():
        maj = m["majority"]
        lines.append(f"{part:<7} {m['n']:>6}  {_metric(m['accuracy'], 8)}  "
                     f"{_metric(m['balanced_accuracy'], 7)}  "
                     f"{_metric(m['roc_auc'], auc_w, one_class)}   "
                     f"{maj['class']:<15} {_metric(maj['accuracy'], 5)}  "
                     f"{_metric(maj['balanced_accuracy'], 7)}")
    return "\n".join(lines)
