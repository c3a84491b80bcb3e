"""``glandseg evaluate``: predict GlaS Test A and B, score with the official metrics, rank
against the published table and draw the study's Fig. 4.

Writes to the output folder: ``predictions/<stem>.png`` (16-bit labels), ``metrics.json``
(the shape of ``glandseg score`` plus ``bce``/``count_score``/``pixel_dice`` in each
part's ``per_image``, and per part ``n_images_total`` and ``partial``: fewer images scored
than the data folder has, as with ``--limit``), ``per_image.csv``, ``leaderboard.txt`` +
``leaderboard.csv`` (a partial result listed, not ranked) and ``fig4_testA.png`` /
``fig4_testB.png`` (best, average and worst image by object Dice), ``errors/<stem>.png``
(error overlays against the ground-truth regions split, with ``thumbs/`` and the ``.json``
the report reads), ``grades.csv`` + ``grading.json`` (benign/malignant grades of the
bundled grader, unless ``grader=False``) and ``report.html`` (all of it on one page).
The same metrics against ground truth whose disconnected regions are separate glands
(:func:`glandseg.metrics.score.split_gt_components`) go to ``*_split_gt.*``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from glandseg import GlandsegError
from glandseg.data.discover import discover
from glandseg.data.io import read_image, read_label, read_mpp, write_label, write_text
from glandseg.infer.predictor import Predictor
from glandseg.models.config import GLAS_MPP

log = logging.getLogger(__name__)


def foreground_probability(probs: np.ndarray, task: str) -> np.ndarray:
    """Gland probability ``(H, W)`` from a dense model's ``(C, H, W)`` output."""
    return probs[0] if task == "binary" else 1.0 - probs[0]


#: Fixed outputs of an evaluation (besides ``predictions/``); each must not be a folder.
OUTPUT_FILES = tuple(f"{stem}{suffix}{ext}" for suffix in ("", "_split_gt")
                     for stem, ext in (("metrics", ".json"), ("per_image", ".csv"),
                                       ("leaderboard", ".txt"), ("leaderboard", ".csv"))) + (
    "fig4_testA.png", "fig4_testB.png", "grades.csv", "grading.json", "report.html",
    "settings.json")


def check_out_dir(out: str | Path) -> Path:
    """Raise :class:`GlandsegError` if ``out`` cannot take an evaluation: it (or a parent)
    is a file, ``predictions`` is a file, or an output name is a folder. Creates nothing."""
    out = Path(out)
    for p in (out, *out.absolute().parents):
        if p.exists():
            if not p.is_dir():
                raise GlandsegError(f"{p} is an existing file, not a folder; give --out a "
                                    "new or existing folder")
            break
    if (out / "predictions").exists() and not (out / "predictions").is_dir():
        raise GlandsegError(f"{out / 'predictions'} is a file; evaluate writes its label "
                            "images into that folder: move it away or choose another --out")
    if (out / "errors").exists() and not (out / "errors").is_dir():
        raise GlandsegError(f"{out / 'errors'} is a file; evaluate writes its error overlays "
                            "into that folder: move it away or choose another --out")
    dirs = [str(out / n) for n in OUTPUT_FILES if (out / n).is_dir()]
    if dirs:
        raise GlandsegError(f"{', '.join(dirs)}: a folder where evaluate writes a file; move "
                            "it away or choose another --out")
    return out


def evaluate_model(predictor: Predictor, data: str | Path, out: str | Path,
                   name: str = "glandseg", splits: tuple[str, ...] = ("testA", "testB"),
                   limit: int | None = None, progress: bool = True,
                   grader: str | Path | None | bool = None) -> dict:
    """Evaluate ``predictor`` on the test parts of the GlaS folder ``data``.

    ``limit`` keeps the first N images of each part (for quick checks; the metrics are then
    not the official figures: each part of ``metrics.json`` carries ``"n_images_total"``,
    the part's annotated images in ``data``, and ``"partial": true`` when fewer were
    scored, and the leaderboard shows the result unranked). ``progress``: a per-image bar
    on stderr (on a terminal). ``grader``: a grader JSON (``None``: the bundled one,
    ``False``: no grading). Returns the metrics dict also written to ``metrics.json``.
    """
    from glandseg.metrics.score import evaluate_pairs, split_gt_components

    out = check_out_dir(out)
    samples = [s for s in discover(data, splits=splits) if s.anno is not None]
    totals = {sp: sum(s.split == sp for s in samples) for sp in splits}
    if limit:
        samples = [s for sp in splits for s in [x for x in samples if x.split == sp][:limit]]
    if not samples:
        raise GlandsegError(f"{data}: no annotated test images (testA_N/testB_N with _anno)")
    from glandseg.report.error_overlay import write_error_outputs
    from glandseg.report.grading import GradeLog

    grading = None if grader is False else GradeLog.open(predictor, grader or None)
    results, split_results, sharpened = [], [], {}
    dense = predictor.task != "instances"
    for s in tqdm(samples, desc="evaluate", unit="img", disable=None if progress else True):
        image, truth = read_image(s.image), read_label(s.anno, what="annotation")
        # the data are GlaS (0.62005 µm/px) unless --input-mpp or the file says otherwise
        mpp = getattr(predictor, "input_mpp", None) or read_mpp(s.image)[0] or GLAS_MPP
        labels, probs = predictor.predict_with_proba(image, mpp, proba=dense)
        if predictor.deblur and getattr(predictor, "last_sharpened", False):
            sharpened[s.name] = round(float(predictor.last_extra_blur), 3)
        prob = foreground_probability(probs, predictor.task) if dense else None
        write_label(out / "predictions" / f"{s.name}.png", labels)
        results += evaluate_pairs([(s.name, labels, truth, prob)])
        split_results += evaluate_pairs([(s.name, labels, truth, prob)], split_gt=True)
        write_error_outputs(out / "errors", s.name, image, labels, split_gt_components(truth))
        if grading is not None:
            grading.add(s.name, s.split, s.grade, image, labels)
    _write_settings(predictor, out, data, splits, limit, sharpened)
    metrics = _write_metrics(results, name, out, "", totals)
    _write_metrics(split_results, name, out, "_split_gt", totals)
    _figures(results, samples, out)
    from glandseg.report.html import write_report

    if grading is not None:
        grading.write(out)
    write_report(out, f"glandseg evaluation: {name}", grades=grading is not None)
    return metrics


def _write_settings(predictor: Predictor, out: Path, data: str | Path,
                    splits: tuple[str, ...], limit: int | None, sharpened: dict) -> None:
    """``settings.json``: what produced the figures beside it (model and weights
    fingerprint, resolution, tiling, TTA, stain normalisation, deblur and the images it
    sharpened, post-processing, data, glandseg version)."""
    from datetime import UTC, datetime

    from glandseg import __version__
    from glandseg.infer.slide import model_id

    tiling = predictor.tiling
    rec = {
        "glandseg": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": predictor.config.get("model"), "task": predictor.task,
        "model_fingerprint": model_id(predictor),
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


def _write_metrics(results: list, name: str, out: Path, suffix: str,
                   totals: dict[str, int] | None = None) -> dict:
    """``metrics{suffix}.json``, ``per_image{suffix}.csv`` and the leaderboard files.

    ``totals``: annotated images per part in the data folder (``n_images_total``; a part
    with fewer scored images is ``"partial": true``)."""
    from glandseg.metrics.score import per_image_table, summarize

    metrics = summarize(results)
    for pname, part in metrics.items():
        total = (totals or {}).get(pname, part["n_images"])
        part["n_images_total"] = total
        part["partial"] = part["n_images"] < total
        rs = [r for r in results if r.part == pname]
        part["per_image"].setdefault("count_score", float(np.mean([r.count_score for r in rs])))
        part["per_image"]["pixel_dice"] = float(np.mean([r.pixel_dice for r in rs]))
    write_text(out / f"metrics{suffix}.json", json.dumps(metrics, indent=2) + "\n")
    rows = per_image_table(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(out / f"per_image{suffix}.csv", buf.getvalue())
    _leaderboard(metrics, name, out, suffix)
    return metrics


def _leaderboard(metrics: dict, name: str, out: Path, suffix: str = "") -> None:
    if not {"testA", "testB"} <= set(metrics):
        log.info("leaderboard needs both Test A and Test B; skipped")
        return
    # partial results (evaluate --limit, a folder short of images) are listed, not ranked
    from glandseg.report.leaderboard import format_table, rank, write_csv

    rows = rank(metrics, name)
    write_text(out / f"leaderboard{suffix}.txt", format_table(rows) + "\n")
    write_csv(out / f"leaderboard{suffix}.csv", rows)


def _figures(results: list, samples: list, out: Path) -> None:
    from glandseg.data.io import read_label as _rl
    from glandseg.report.figures import ImageRecord, best_average_worst, pick_best_average_worst

    by_name = {s.name: s for s in samples}
    for part in ("testA", "testB"):
        rs = [r for r in results if r.part == part]
        if len(rs) < 1:
            continue
        light = [ImageRecord(r.stem, None, None, None, {"object_dice": r.stats.scores()["object_dice"]})
                 for r in rs]
        picked = pick_best_average_worst(light, key="object_dice")
        full = []
        for _, rec, _score in picked:
            s = by_name[rec.name]
            full.append(ImageRecord(rec.name, read_image(s.image), _rl(s.anno),
                                    _rl(out / "predictions" / f"{rec.name}.png"), rec.scores))
        best_average_worst(full, out / f"fig4_{part}.png", key="object_dice")
