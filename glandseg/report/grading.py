"""Grades in the outputs: the grading step of ``glandseg evaluate`` and ``glandseg grade``.

- :func:`open_grader`: the bundled (or given) grader ready to grade images, or ``None``
  with a warning when it cannot grade (e.g. it was fit on other segmentation weights);
- :class:`GradeLog`: collects per-image grades during an evaluation and writes
  ``grades.csv`` (image, part, truth, grade, probability, correct) and ``grading.json``
  (accuracy, balanced accuracy, ROC AUC, confusion matrix per test part and for all images
  together, beside the majority-class baseline);
- :func:`grades_csv`: the text of ``glandseg grade``'s ``grades.csv`` (image, grade,
  probability).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glandseg import GlandsegError
from glandseg.data.io import write_text

log = logging.getLogger(__name__)

GRADES_CSV = "grades.csv"
GRADING_JSON = "grading.json"


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
                          "grade": g.grade, "probability": g.probability,
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
                                         [r["probability"] for r in rs], gr.threshold, majority)
        if len(parts) > 1:
            parts["all"] = binary_metrics([r["truth"] for r in rows],
                                          [r["probability"] for r in rows], gr.threshold,
                                          majority)
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
        cols = ["image", "part", "truth", "grade", "probability", "correct"]
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({**r, "probability": f"{r['probability']:.6f}"})
        write_text(out / GRADES_CSV, buf.getvalue())
        summary = self.summary()
        write_text(out / GRADING_JSON, json.dumps(summary, indent=2) + "\n")
        return summary


def grades_csv(rows: Sequence[tuple[str, str, float]]) -> str:
    """``grades.csv`` of ``glandseg grade``: ``image, grade, probability`` (p(malignant))."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "grade", "probability"])
    for stem, grade, p in rows:
        w.writerow([stem, grade, f"{p:.6f}"])
    return buf.getvalue()


def format_grading(summary: dict) -> str:
    """A plain-text table of :meth:`GradeLog.summary` (printed by ``glandseg evaluate``)."""
    lines = ["part    images  accuracy  bal.acc  ROC AUC   majority: class     acc  bal.acc"]
    for part, m in summary["parts"].items():
        maj = m["majority"]
        lines.append(f"{part:<7} {m['n']:>6}  {m['accuracy']:>8.3f}  "
                     f"{m['balanced_accuracy']:>7.3f}  {m['roc_auc']:>7.3f}   "
                     f"{maj['class']:<15} {maj['accuracy']:.3f}  {maj['balanced_accuracy']:.3f}")
    return "\n".join(lines)
