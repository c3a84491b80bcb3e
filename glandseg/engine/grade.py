"""Grading pipelines: benign/malignant grades of image files (``glandseg grade``) and the
grading step of an evaluation (:class:`GradeLog`).

- :func:`open_grader`: the bundled (or given) grader ready to grade images, or ``None``
  with a warning when it cannot grade (e.g. it was fit on other segmentation weights);
- :class:`GradeLog`: per-image grades of an evaluation and their metrics, written by
  :func:`glandseg.report.grading.write_grading`;
- :func:`grade_files`: grade files into ``<out>/grades.csv`` (never over an input or a
  file glandseg did not write).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from glandseg import GlandsegError
from glandseg.data.io import read_image
from glandseg.data.slide import is_large
from glandseg.grade.classifier import binary_metrics
from glandseg.grade.engine import ImageGrader
from glandseg.report.batch import (
    STATE_DIR,
    check_writable,
    collect_inputs,
    csv_problem,
    folder_lock,
    prepare_out,
    write_joined,
)
from glandseg.report.grading import GRADES_CSV, PROBABILITY, grades_csv, no_nan, write_grading

log = logging.getLogger(__name__)


def open_grader(predictor=None, grader: str | Path | None = None, device: str = "auto"):
    """An :class:`~glandseg.grade.engine.ImageGrader` (``grader``: a grader JSON, ``None``
    = bundled) reusing ``predictor`` when it has the grader's segmentation weights; ``None``
    (warning logged) when the grader cannot be used."""
    try:
        return ImageGrader.load(grader, predictor, device=device)
    except GlandsegError as exc:
        log.warning("no grades: %s", exc)
        return None


@dataclass
class GradeLog:
    """Per-image grades of an evaluation (see the module doc). ``grader``: an
    :class:`~glandseg.grade.engine.ImageGrader` (which grades the images, e.g. in worker
    processes: :meth:`~glandseg.grade.engine.ImageGrader.grade_segmented`)."""

    grader: Any
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, predictor=None, grader: str | Path | None = None) -> GradeLog | None:
        """A log grading with :func:`open_grader` (``None`` if it cannot grade)."""
        g = open_grader(predictor, grader, device=getattr(predictor, "device", "auto"))
        return None if g is None else cls(g)

    def record(self, stem: str, part: str, truth: str | None, g) -> None:
        """Log the :class:`~glandseg.grade.engine.Grade` ``g`` of one image."""
        self.rows.append({"image": stem, "part": part, "truth": truth or "",
                          "grade": g.grade, PROBABILITY: g.probability,
                          "correct": "" if not truth else int(truth == g.grade)})

    def summary(self) -> dict:
        """``grading.json``'s content: per part and ``all`` :func:`binary_metrics`."""
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
        parts = no_nan(parts)
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
        """Write ``grades.csv`` and ``grading.json`` into ``out``
        (:func:`glandseg.report.grading.write_grading`); returns the summary."""
        summary = self.summary()
        write_grading(out, self.rows, summary)
        return summary


@dataclass
class GradeReport:
    """What :func:`grade_files` did: ``rows`` ``(stem, grade, P(malignant))`` of the graded
    images, ``failed`` ``(path, why)``, and the ``grades.csv`` written."""

    rows: list[tuple[str, str, float]]
    failed: list[tuple[str, str]]
    target: Path

    @property
    def n_malignant(self) -> int:
        return sum(r[1] == "malignant" for r in self.rows)


def grade_files(inputs: list[str], out_dir: str | os.PathLike, overwrite: bool = False,
                grader: str | Path | None = None, device: str = "auto",
                backend: str = "auto", threads: int | None = None,
                progress: bool = True, precision: str = "fp32") -> GradeReport:
    """Grade the images of ``inputs`` (files, folders, globs:
    :func:`glandseg.report.batch.collect_inputs`) into ``<out_dir>/grades.csv``.

    ``grader``: a grader JSON (``None``: the bundled one), loaded on ``device`` /
    ``backend`` / ``threads`` / ``precision``. Raises :class:`GlandsegError` before loading the grader if
    ``grades.csv`` would replace an input or a file glandseg did not write, or if an
    earlier ``grades.csv`` of glandseg exists without ``overwrite``. An unreadable input
    or a whole slide is a failed input (logged, listed in the report); a write error (a
    full disk) leaves the earlier ``grades.csv`` whole and is one line.
    """
    paths = collect_inputs(inputs)
    out = prepare_out(out_dir)
    check_writable(out)  # before loading the grader
    target = out / GRADES_CSV
    given = {Path(os.path.abspath(p)) for p in paths} | {p.resolve() for p in paths}
    if target in given or (target.exists() and target.resolve() in given):
        raise GlandsegError(f"{target} is one of the inputs; choose an --out folder that "
                            "holds no input images")
    problem = csv_problem(out, GRADES_CSV) if out.is_dir() else None
    if problem:
        raise GlandsegError(f"refusing to overwrite {problem}: move it away or choose "
                            "another --out")
    if target.exists() and not overwrite:
        raise GlandsegError(f"{target} exists (written by glandseg earlier): pass --overwrite "
                            "to replace it or choose another --out")
    image_grader = ImageGrader.load(grader, device=device, backend=backend, threads=threads,
                                    precision=precision)
    rows, failed = [], []
    for path in tqdm(paths, desc="grade", unit="img", disable=None if progress else True):
        try:
            if is_large(path):
                raise GlandsegError(f"{path}: a whole slide or large image; the grader "
                                    "grades GlaS-sized fields of view (crop regions first)")
            g = image_grader.grade(read_image(path))
        except GlandsegError as exc:
            log.error("%s", exc)
            failed.append((str(path), str(exc)))
            continue
        rows.append((path.stem, g.grade, g.probability))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GlandsegError(f"{out}: cannot create the output folder ({exc})") from exc
    try:
        (out / STATE_DIR).mkdir(exist_ok=True)
        with folder_lock(out):
            write_joined(out, GRADES_CSV, grades_csv(rows))
    except OSError as exc:  # a full disk: the earlier grades.csv (if any) stays whole
        raise GlandsegError(f"{out}: cannot write {GRADES_CSV} ({exc.strerror or exc}); "
                            "free space (or fix the folder) and run again") from exc
    return GradeReport(rows, failed, target)
