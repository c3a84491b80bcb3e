"""The files of ``glandseg evaluate`` (the pipeline that predicts GlaS Test A and B, scores
them and grades them is :func:`glandseg.engine.evaluate.evaluate_model`).

It writes to the output folder: ``predictions/<stem>.png`` (16-bit labels), ``metrics.json``
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

from glandseg import GlandsegError
from glandseg.data.io import read_image, write_text

log = logging.getLogger(__name__)


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


def write_metrics(results: list, name: str, out: Path, suffix: str,
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
    write_leaderboard(metrics, name, out, suffix)
    return metrics


def write_leaderboard(metrics: dict, name: str, out: Path, suffix: str = "") -> None:
    if not {"testA", "testB"} <= set(metrics):
        log.info("leaderboard needs both Test A and Test B; skipped")
        return
    # partial results (evaluate --limit, a folder short of images) are listed, not ranked
    from glandseg.report.leaderboard import format_table, rank, write_csv

    rows = rank(metrics, name)
    write_text(out / f"leaderboard{suffix}.txt", format_table(rows) + "\n")
    write_csv(out / f"leaderboard{suffix}.csv", rows)


def write_figures(results: list, samples: list, out: Path) -> None:
    """``fig4_<part>.png``: the best, average and worst image of each test part by object
    Dice (``results``: :func:`glandseg.metrics.score.evaluate_pairs` records; ``samples``:
    the :class:`glandseg.data.discover.Sample` scored, predictions read back from
    ``out/predictions``)."""
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
