"""``glandseg evaluate``'s pipeline: predict GlaS Test A and B, score with the official
metrics, grade, and hand everything to :mod:`glandseg.report.evaluate` (metrics, per-image
table, leaderboard, Fig. 4, settings), :mod:`glandseg.report.error_overlay` and
:mod:`glandseg.report.html`. ``train.export`` evaluates exported weights with it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from glandseg import GlandsegError, __version__
from glandseg.data.discover import discover
from glandseg.data.io import read_image, read_label, read_mpp, write_label, write_text
from glandseg.engine.grade import GradeLog
from glandseg.engine.jobs import plan_jobs, worker_pool, worker_state
from glandseg.infer.predictor import Predictor
from glandseg.infer.windows import model_id
from glandseg.metrics.score import evaluate_pairs, split_gt_components
from glandseg.models.config import GLAS_MPP
from glandseg.report.error_overlay import write_error_outputs
from glandseg.report.evaluate import check_out_dir, write_figures, write_metrics
from glandseg.report.html import write_report

__all__ = ["check_out_dir", "evaluate_model", "evaluate_sample", "foreground_probability"]


def foreground_probability(probs: np.ndarray, task: str) -> np.ndarray:
    """Gland probability ``(H, W)`` from a dense model's ``(C, H, W)`` output."""
    return probs[0] if task == "binary" else 1.0 - probs[0]


def evaluate_model(predictor: Predictor, data: str | Path, out: str | Path,
                   name: str = "glandseg", splits: tuple[str, ...] = ("testA", "testB"),
                   limit: int | None = None, progress: bool = True,
                   grader: str | Path | None | bool = None, jobs: int | None = None) -> dict:
    """Evaluate ``predictor`` on the test parts of the GlaS folder ``data``.

    ``limit`` keeps the first N images of each part (for quick checks; the metrics are then
    not the official figures: each part of ``metrics.json`` carries ``"n_images_total"``,
    the part's annotated images in ``data``, and ``"partial": true`` when fewer were
    scored, and the leaderboard shows the result unranked). ``progress``: a per-image bar
    on stderr (on a terminal). ``grader``: a grader JSON (``None``: the bundled one,
    ``False``: no grading). ``jobs``: worker processes on the CPU
    (:func:`glandseg.engine.jobs.plan_jobs`; default: auto, one per core for an ONNX
    Runtime predictor; the same figures as one process). Returns the metrics dict also
    written to ``metrics.json``.
    """
    out = check_out_dir(out)
    samples = [s for s in discover(data, splits=splits) if s.anno is not None]
    totals = {sp: sum(s.split == sp for s in samples) for sp in splits}
    if limit:
        samples = [s for sp in splits for s in [x for x in samples if x.split == sp][:limit]]
    if not samples:
        raise GlandsegError(f"{data}: no annotated test images (testA_N/testB_N with _anno)")
    grading = None if grader is False else GradeLog.open(predictor, grader or None)
    results, split_results, sharpened = [], [], {}
    image_grader = None if grading is None else grading.grader
    threads = getattr(getattr(predictor, "backend", None), "threads", None)
    n_jobs, per_job = plan_jobs(predictor, len(samples), jobs, threads, image_grader)
    with worker_pool(predictor, image_grader, n_jobs, per_job) as pool:
        if pool is None:
            done = (evaluate_sample(s, out, predictor, image_grader) for s in samples)
        else:
            done = pool.map(_evaluate_in_worker, samples, [out] * len(samples))
        for s, (res, split_res, blur, grade) in tqdm(zip(samples, done, strict=True),
                                                     total=len(samples), desc="evaluate",
                                                     unit="img",
                                                     disable=None if progress else True):
            results += res
            split_results += split_res
            if blur is not None:
                sharpened[s.name] = blur
            if grading is not None:
                grading.record(s.name, s.split, s.grade, grade)
    _write_settings(predictor, out, data, splits, limit, sharpened)
    metrics = write_metrics(results, name, out, "", totals)
    write_metrics(split_results, name, out, "_split_gt", totals)
    write_figures(results, samples, out)
    if grading is not None:
        grading.write(out)
    write_report(out, f"glandseg evaluation: {name}", grades=grading is not None)
    return metrics


def evaluate_sample(s, out: Path, predictor: Predictor, grader=None) -> tuple:
    """One annotated test image ``s`` (a :class:`glandseg.data.discover.Sample`): predicted,
    its labels written to ``out/predictions``, its error overlay to ``out/errors``, scored
    against the truth as given and split (:func:`evaluate_pairs`) and graded (``grader``:
    an :class:`glandseg.grade.engine.ImageGrader` or ``None``). Returns ``(results,
    split-truth results, extra blur sharpened away or None, grade or None)``."""
    image, truth = read_image(s.image), read_label(s.anno, what="annotation")
    # the data are GlaS (0.62005 µm/px) unless --input-mpp or the file says otherwise
    mpp = getattr(predictor, "input_mpp", None) or read_mpp(s.image)[0] or GLAS_MPP
    dense = predictor.task != "instances"
    labels, probs = predictor.predict_with_proba(image, mpp, proba=dense)
    blur = None
    if predictor.deblur and getattr(predictor, "last_sharpened", False):
        blur = round(float(predictor.last_extra_blur), 3)
    prob = foreground_probability(probs, predictor.task) if dense else None
    write_label(out / "predictions" / f"{s.name}.png", labels)
    res = evaluate_pairs([(s.name, labels, truth, prob)])
    split_res = evaluate_pairs([(s.name, labels, truth, prob)], split_gt=True)
    write_error_outputs(out / "errors", s.name, image, labels, split_gt_components(truth))
    grade = None
    if grader is not None:
        grade = grader.grade_segmented(image, labels, predictor)
    return res, split_res, blur, grade


def _evaluate_in_worker(s, out: Path) -> tuple:
    """:func:`evaluate_sample` in a worker process (:mod:`glandseg.engine.jobs`)."""
    predictor, grader = worker_state()
    return evaluate_sample(s, out, predictor, grader)


def _write_settings(predictor: Predictor, out: Path, data: str | Path,
                    splits: tuple[str, ...], limit: int | None, sharpened: dict) -> None:
    """``settings.json``: what produced the figures beside it (model and weights
    fingerprint, resolution, tiling, TTA, stain normalisation, deblur and the images it
    sharpened, post-processing, data, glandseg version)."""
    from datetime import UTC, datetime

    tiling = predictor.tiling
    rec = {
        "glandseg": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": predictor.config.get("model"), "task": predictor.task,
        # the weights' fingerprint (glandseg.models.fingerprint), as the grader records it
        "model_fingerprint": predictor.fingerprint,
        "model_config_fingerprint": model_id(predictor),  # weights + config (slide cache)
        "backend": getattr(getattr(predictor, "backend", None), "name", None),
        "precision": getattr(getattr(predictor, "backend", None), "precision", "fp32"),
        "model_mpp": predictor.mpp, "input_mpp": getattr(predictor, "input_mpp", None),
        "tiling": tiling.as_dict() if hasattr(tiling, "as_dict") else str(tiling),
        "tta": bool(getattr(predictor, "tta", False)),
        "stain_norm": getattr(predictor, "stain_norm", None),
        "deblur": getattr(predictor, "deblur", None) or "off",
        "sharpened_images": sharpened,
        "postprocess": predictor.config.get("postprocess"),
        "data": str(data), "splits": list(splits), "limit": limit,
    }
    write_text(out / "settings.json", json.dumps(rec, indent=2) + "\n")
