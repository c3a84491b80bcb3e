"""Segment files into one output folder: the pipeline of ``glandseg predict`` and ``demo``.

:func:`predict_files` reads each input, runs the predictor (a whole slide or large image
by region: :func:`glandseg.engine.slide.predict_slide_file`), grades it when asked, and
hands the labels (2-D integers, 0 = background) to :mod:`glandseg.report.batch`, which
writes the outputs and their records (the folder rules are in that module's doc).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from glandseg import GlandsegError
from glandseg.data.io import read_image, read_mpp
from glandseg.data.slide import is_large
from glandseg.engine.jobs import available_cores, plan_jobs, worker_pool, worker_state
from glandseg.engine.slide import predict_slide_file
from glandseg.metrics.uncertainty import uncertainty
from glandseg.models.config import GLAS_MPP
from glandseg.report.batch import (
    CSV_NAME,
    clean_stale_temps,
    commit_image,
    count_glands,
    folder_lock,
    join_glands_csv,
    plan_outputs,
    prepare_out,
)

if TYPE_CHECKING:  # the predictor is only called, never built, here
    from glandseg.infer.predictor import Predictor

log = logging.getLogger(__name__)

__all__ = ["GLAS_MPP", "MAX_MODEL_PIXELS", "MAX_UPSCALE", "PredictReport", "check_scale",
           "input_resolution", "predict_files", "segment_file"]

#: The whole-image path (images that are not slides) refuses an image that its resolution
#: would enlarge more than this to reach the model's (a wrong ``--input-mpp``, or too
#: little detail for the model: a 32x32 px image at 100 µm/px would become 5160² px) ...
MAX_UPSCALE = 8.0
#: ... or that would exceed this many pixels at the model's resolution (a tiled pyramidal
#: TIFF of it goes the slide path, by region).
MAX_MODEL_PIXELS = 64_000_000


def check_scale(predictor: Any, path: Path, shape: tuple[int, int], mpp: float) -> None:
    """Refuse (:class:`GlandsegError` naming the file and the resolution) an image of
    ``shape = (H, W)`` px at ``mpp`` µm/px that the whole-image path would enlarge more than
    :data:`MAX_UPSCALE` times, or to more than :data:`MAX_MODEL_PIXELS`, at the model's
    resolution. A predictor without ``zoom``/``mpp`` (no resolution) passes."""
    zoom_of, model_mpp = getattr(predictor, "zoom", None), getattr(predictor, "mpp", None)
    if zoom_of is None or model_mpp is None:
        return
    zoom = float(zoom_of(mpp))
    h, w = shape
    mh, mw = max(1, round(h * zoom)), max(1, round(w * zoom))
    at = (f"{path}: at {mpp:g} µm/px this {w}x{h} px image is {mw}x{mh} px at the model's "
          f"{model_mpp:g} µm/px")
    if zoom > MAX_UPSCALE:
        raise GlandsegError(f"{at}, enlarged {zoom:.3g}x (at most {MAX_UPSCALE:g}x: it holds "
                            "too little detail for the model); check --input-mpp (e.g. 0.25 "
                            "for a 40x scan) or the resolution in the file's metadata")
    if mh * mw > MAX_MODEL_PIXELS:
        raise GlandsegError(f"{at} ({mh * mw / 1e6:.0f} MP, over the "
                            f"{MAX_MODEL_PIXELS / 1e6:g} MP of the whole-image path); check "
                            "--input-mpp, or convert it to a tiled pyramidal TIFF (`vips "
                            "tiffsave IN OUT.tif --tile --pyramid`), which goes the slide path")


@dataclass
class PredictReport:
    """What a batch did: images segmented / skipped, glands found, failures ``(path, why)``."""

    n_ok: int = 0
    n_glands: int = 0
    n_skipped: int = 0
    n_rows: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def input_resolution(predictor: Any, path: Path, mpp: float | None) -> float:
    """µm/px of the input ``path``: ``mpp`` if given, else the predictor's rule
    (:meth:`Predictor.resolution_of`: ``input_mpp``, file metadata, else the model's, said
    once); for a predictor without one: the file's metadata, else GlaS's 0.62005."""
    rule = getattr(predictor, "resolution_of", None)
    if rule is not None:
        return rule(path, mpp)
    return mpp if mpp is not None else (read_mpp(path)[0] or GLAS_MPP)


def segment_file(out: Path, path: Path, predictor, grader, mpp: float | None,
                 mode: str) -> int | None:
    """One ordinary image ``path`` (not a slide) → its outputs in ``out``: read, segment,
    grade, write (:func:`glandseg.report.batch.commit_image`). Returns the number of glands,
    or ``None`` when complete outputs appeared meanwhile (``mode="skip"``). Raises
    :class:`GlandsegError` for a bad input, ``OSError`` when writing fails."""
    image = read_image(path)
    mpp_i = input_resolution(predictor, path, mpp)
    check_scale(predictor, path, image.shape[:2], mpp_i)
    unc = None
    if hasattr(predictor, "predict_with_proba"):  # dense models: also how unsure
        labels, probs = predictor.predict_with_proba(image, mpp=mpp_i)
        unc = None if probs is None else uncertainty(probs)
    elif hasattr(predictor, "resolution_of"):
        labels = predictor.predict(image, mpp=mpp_i)
    else:
        labels = predictor.predict(image)
    grade = _grade(grader, predictor, path, image, labels)
    if not commit_image(out, path.stem, path, image, labels, mpp_i, mode, grade=grade,
                        uncertainty=unc):
        return None
    return count_glands(labels)


def _outcome(work, *args) -> tuple:
    """``work(*args)`` as ``("ok", its result)``, ``("failed", why)`` (a bad input: a
    :class:`GlandsegError`, logged) or ``("oserror", exc)`` (writing failed)."""
    try:
        return "ok", work(*args)
    except GlandsegError as exc:
        log.error("%s", exc)
        return "failed", str(exc)
    except OSError as exc:
        return "oserror", exc


def _segment_in_worker(out: Path, path: Path, mpp: float | None, mode: str) -> tuple:
    """:func:`segment_file` in a worker process (:mod:`glandseg.engine.jobs`), as
    :func:`_outcome`."""
    predictor, grader = worker_state()
    return _outcome(segment_file, out, path, predictor, grader, mpp, mode)


def predict_files(paths: list[Path], out_dir: str | os.PathLike, predictor: Predictor,
                  mpp: float | None = None, mode: str = "refuse",
                  progress: bool = True, grader=None, client=None,
                  jobs: int | None = None) -> PredictReport:
    """Segment ``paths`` into ``out_dir`` (outputs and rules in the module doc).

    ``predictor``: a :class:`Predictor` (called ``predict(image, mpp=...)``: segmented at
    the model's resolution, labels at the input's), or anything with
    ``predict(uint8 (H, W, 3)) -> (H, W)`` integer labels. ``mpp``: the inputs' µm/px
    (default: per image, :func:`input_resolution`); the µm columns of ``glands.csv`` use it.
    ``mode``: ``"refuse"`` / ``"overwrite"`` / ``"skip"`` existing outputs of ours.
    ``progress``: a per-image bar on stderr (shown on a terminal only).
    ``client``: a Dask ``distributed.Client`` (or ``concurrent.futures`` executor) on which
    the windows of whole slides run as tasks (:func:`predict_slide_file`).
    ``grader``: an :class:`glandseg.grade.engine.ImageGrader` to grade each image (not
    whole slides), or ``None``.
    ``jobs``: worker processes on the CPU, sharing the predictor's threads (``--threads``;
    :func:`glandseg.engine.jobs.plan_jobs`; default: auto, one process per core for an
    ONNX Runtime predictor); images, and the windows of slides without ``client``, are
    shared among them. Outputs are the same as in one process.
    Raises :class:`GlandsegError` before writing anything if the run would overwrite an
    input or a file glandseg did not write (:func:`glandseg.report.batch.plan_outputs`). An image that its
    resolution would enlarge too much is a failed input (:func:`check_scale`). When writing
    fails (``OSError``: a full disk, a folder made read-only) the batch stops, the images
    finished so far are joined into ``glands.csv`` / ``images.csv``, nothing is left
    half-written (:func:`glandseg.report.batch.commit_image`) and a one-line :class:`GlandsegError` names the
    folder. Temporary files of a killed earlier run are removed at the start
    (:func:`glandseg.report.batch.clean_stale_temps`).
    """
    started = time.time()
    todo, skipped = plan_outputs(paths, out_dir, mode)
    out = prepare_out(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out):
            stale = clean_stale_temps(out, started)
    except OSError as exc:
        raise GlandsegError(f"{out}: cannot write into the output folder "
                            f"({exc.strerror or exc}); choose another --out") from exc
    if stale:
        log.info("removed %d temporary file(s) of an interrupted earlier run from %s",
                 len(stale), out)
    report = PredictReport(n_skipped=len(skipped))
    if skipped:
        log.info("%d image(s) with complete outputs in %s skipped", len(skipped), out)
    large, small = [], []
    for p in todo:
        (large if is_large(p) else small).append(p)
    # a slide has many windows to share among the workers
    n_items = max(len(small), available_cores()) if large else len(small)
    threads = getattr(getattr(predictor, "backend", None), "threads", None)
    n_jobs, per_job = plan_jobs(predictor, n_items, jobs, threads, grader)
    write_error: tuple[Path, OSError] | None = None
    n_left = 0
    with worker_pool(predictor, grader, n_jobs, per_job) as pool, \
            tqdm(total=len(todo), desc="predict", unit="img",
                 disable=None if progress else True) as bar:
        futures = {}
        if pool is None:
            images = ((p, _outcome(segment_file, out, p, predictor, grader, mpp, mode))
                      for p in small)
        else:
            futures = {pool.submit(_segment_in_worker, out, p, mpp, mode): p for p in small}
            images = ((futures[f], f.result()) for f in as_completed(futures)
                      if not f.cancelled())
        slides = ((p, _outcome(predict_slide_file, out, p, predictor, mpp, mode, progress,
                               client if client is not None else pool,
                               per_job if pool is not None else None)) for p in large)
        for n_done, (path, (kind, value)) in enumerate(itertools.chain(images, slides), 1):
            bar.update(1)
            if kind == "ok":  # glands, or None: complete outputs appeared (mode "skip")
                report.n_skipped += value is None
                report.n_ok += value is not None
                report.n_glands += value or 0
            elif kind == "failed":
                report.failed.append((str(path), value))
            else:  # writing failed: stop (the image is not done either)
                write_error, n_left = (path, value), len(todo) - n_done + 1
                for f in futures:
                    f.cancel()
                break
    try:
        report.n_rows = join_glands_csv(out)
        joined = None
    except OSError as exc:
        joined = exc
    if write_error is None and joined is None:
        return report
    path, exc = write_error or (None, joined)
    where = f" at {path.name}" if path is not None else f" writing {CSV_NAME}"
    kept = (f"{report.n_ok} image(s) of this run finished and are in {CSV_NAME}"
            if joined is None else
            f"{report.n_ok} image(s) of this run finished ({CSV_NAME} not rebuilt)")
    failed = f", {len(report.failed)} failed" if report.failed else ""
    raise GlandsegError(f"{out}: cannot write ({exc.strerror or exc}){where}; stopped: {kept}"
                        f", {n_left} not done{failed}; free space (or fix the folder) and run "
                        "again with --skip-existing") from exc


def _grade(grader, predictor, path: Path, image, labels):
    """The image's grade (``None`` without a grader, or if grading fails: logged)."""
    if grader is None:
        return None
    try:
        return grader.grade_segmented(image, labels, predictor)
    except (GlandsegError, ValueError) as exc:
        log.warning("%s: not graded (%s)", path, exc)
        return None
