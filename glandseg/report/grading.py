"""Grades in the outputs of ``glandseg evaluate`` and ``glandseg grade`` (the grading itself
is :mod:`glandseg.engine.grade`; this module writes files and formats tables).

- :func:`write_grading`: an evaluation's ``grades.csv`` (image, part, truth, grade,
  grade_probability, correct) and ``grading.json`` (accuracy, balanced accuracy, ROC AUC,
  confusion matrix per test part and for all images together, beside the majority-class baseline; a metric that is not
  defined, e.g. ROC AUC of a part with one class, is ``null``);
- :func:`format_grading`: ``grading.json`` as a plain-text table;
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
from pathlib import Path
from typing import Any

from glandseg.data.io import csv_quoting, csv_safe, write_text

log = logging.getLogger(__name__)

GRADES_CSV = "grades.csv"
GRADING_JSON = "grading.json"
#: The P(malignant) column of ``grades.csv`` (as in ``images.csv``).
PROBABILITY = "grade_probability"


def write_grading(out: str | Path, rows: Sequence[dict[str, Any]], summary: dict) -> None:
    """Write ``grades.csv`` (``rows``: ``image, part, truth, grade, grade_probability,
    correct`` per image) and ``grading.json`` (``summary``: per part metrics, see
    :meth:`glandseg.engine.grade.GradeLog.summary`) into ``out``, each atomically."""
    out = Path(out)
    buf = io.StringIO()
    cols = ["image", "part", "truth", "grade", PROBABILITY, "correct"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n",
                       quoting=csv_quoting(r["image"] for r in rows))
    w.writeheader()
    for r in rows:
        w.writerow({**r, "image": csv_safe(r["image"]), PROBABILITY: f"{r[PROBABILITY]:.6f}"})
    write_text(out / GRADES_CSV, buf.getvalue())
    write_text(out / GRADING_JSON, json.dumps(summary, indent=2) + "\n")


def grades_csv(rows: Sequence[tuple[str, str, float]]) -> str:
    """``grades.csv`` of ``glandseg grade``: ``image, grade, grade_probability``
    (P(malignant)); image names made inert for spreadsheets (:func:`csv_safe`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv_quoting(r[0] for r in rows))
    w.writerow(["image", "grade", PROBABILITY])
    for stem, grade, p in rows:
        w.writerow([csv_safe(stem), grade, f"{p:.6f}"])
    return buf.getvalue()


def no_nan(obj: Any) -> Any:
    """``obj`` with every NaN float (an undefined metric) replaced by ``None`` (JSON
    ``null``: JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [no_nan(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _metric(v: Any, width: int, why: str = "n/a") -> str:
    """A metric right-aligned in ``width`` columns, or ``why`` when it is undefined."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{why:>{width}}"
    return f"{v:>{width}.3f}"


def format_grading(summary: dict) -> str:
    """A plain-text table of :meth:`glandseg.engine.grade.GradeLog.summary` (printed by ``glandseg evaluate``)."""
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
