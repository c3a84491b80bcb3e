"""Score predicted label images against GlaS annotations, per test part.

Public API: :func:`score_dirs` and :func:`score_pairs` return the summary dict
(``{"testA": {"n_images", "pooled", "per_image"}, "testB": ..., "other": ...}``, parts
without images omitted); :func:`evaluate_pairs` / :func:`evaluate_dirs` return the
per-image results that :func:`summarize` and :func:`per_image_table` turn into the
summary and CSV rows, so both come from one pass.

*pooled* is the official GlaS aggregation: all objects of a part together, each
weighted by its area over the part's total area, F1 from TP/FP/FN summed over the
part. *per_image* is the mean over the part's images of each image's own scores.
Label images are 2-D integer arrays ``(H, W)``, 0 = background, ids used as given.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glandseg import GlandsegError
from glandseg.data.discover import SPLITS, split_of
from glandseg.data.io import LABEL_EXTS, implausible_label, read_label
from glandseg.metrics.glas import ObjectStats, image_stats
from glandseg.metrics.pixel import bce, count_score, pixel_dice

log = logging.getLogger(__name__)

__all__ = [
    "PARTS",
    "ImageResult",
    "evaluate_pairs",
    "evaluate_dirs",
    "summarize",
    "score_pairs",
    "score_dirs",
    "per_image_table",
    "format_table",
    "find_pairs",
    "split_gt_components",
]

PARTS = ("testA", "testB", "other")
PRED_EXTS = (".png", ".tif", ".tiff")
_GT_PREF = (".bmp", ".png", ".tif", ".tiff")  # as glandseg.data.discover
_NUM_RE = re.compile(r"(\d+)")

#: ``(stem, pred_labels, gt_labels)`` or ``(stem, pred_labels, gt_labels, probabilities)``
Item = tuple


def part_of(stem: str) -> str:
    """``testA``/``testB`` from an image stem, anything else (``train_3`` too) ``other``."""
    split = split_of(stem)
    return split if split in ("testA", "testB") else "other"


def _stem_key(stem: str) -> tuple:
    return (PARTS.index(part_of(stem)), [int(t) if t.isdigit() else t for t in _NUM_RE.split(stem)])


@dataclass(frozen=True)
class ImageResult:
    """Scores of one image: object sums (:class:`ObjectStats`) and pixel metrics.

    ``bce`` is ``None`` when no probabilities were given.
    """

    stem: str
    part: str
    stats: ObjectStats
    pixel_dice: float
    bce: float | None = None

    @property
    def count_score(self) -> float:
        """``min(n_pred / n_gt, n_gt / n_pred)`` (1.0 when both are 0)."""
        return count_score(self.stats.n_pred, self.stats.n_gt)


GT_MIN_PIECE = 10


def split_gt_components(gt: np.ndarray, min_piece: int = GT_MIN_PIECE) -> np.ndarray:
    """Ground truth only: give each connected region (8-connectivity) of a label its own id.

    Some GlaS annotations (testB_3, 11, 18, 19) use one value for 5-9 separate glands; the
    published results can only be reproduced if those are separate objects (a perfect
    per-gland segmentation scores F1 0.864 on Test B against the files as given, below
    several published entries). Touching regions of different labels stay apart; pieces
    under ``min_piece`` px (stray pixels) become background. Never used on predictions.
    Returns ``int32 (H, W)``, 0 = background.
    """
    from skimage.measure import label

    out = label(np.asarray(gt), background=0, connectivity=2).astype(np.int32)
    if min_piece > 1 and out.max():
        counts = np.bincount(out.ravel())
        small = counts < min_piece
        small[0] = False
        out[small[out]] = 0
    return out


def evaluate_pairs(
    items: Iterable[Item], *, empty_distance: float | None = None, split_gt: bool = False
) -> list[ImageResult]:
    """Score each ``(stem, pred, gt[, prob])`` item; ``pred``/``gt`` label images ``(H, W)``.

    ``prob`` (optional, may be ``None``): float foreground probabilities ``(H, W)`` in
    [0, 1] for the BCE. Raises :class:`GlandsegError` naming every stem whose arrays do
    not have one shape. ``empty_distance``: see :func:`glandseg.metrics.glas.image_stats`.
    ``split_gt``: score against :func:`split_gt_components` of the ground truth (the
    prediction is always used as given).
    """
    results: list[ImageResult] = []
    bad: list[str] = []
    for item in items:
        if len(item) not in (3, 4):
            raise ValueError(f"an item is (stem, pred, gt[, prob]), got {len(item)} elements")
        stem, pred, gt = item[0], np.asarray(item[1]), np.asarray(item[2])
        prob = None if len(item) == 3 or item[3] is None else np.asarray(item[3])
        if pred.shape != gt.shape or (prob is not None and prob.shape != gt.shape):
            extra = "" if prob is None else f", probabilities {prob.shape}"
            bad.append(f"{stem} (prediction {pred.shape}, truth {gt.shape}{extra})")
            continue
        if bad:  # do not spend time scoring once the run is bound to fail
            continue
        if split_gt:
            gt = split_gt_components(gt)
        stats = image_stats(pred, gt, empty_distance=empty_distance)
        results.append(
            ImageResult(
                stem=str(stem),
                part=part_of(str(stem)),
                stats=stats,
                pixel_dice=pixel_dice(pred, gt),
                bce=None if prob is None else bce(prob, gt),
            )
        )
        log.debug("%s: %s", stem, stats.scores())
    if bad:
        raise GlandsegError("arrays of different shapes: " + "; ".join(bad))
    return results


def _mean(values: Sequence[float]) -> float:
    return float(math.fsum(values) / len(values)) if values else math.nan


def summarize(results: Iterable[ImageResult]) -> dict:
    """Summary dict per part (testA, testB, other; parts without images omitted).

    Each part: ``{"n_images", "pooled": {"f1", "object_dice", "object_hausdorff", "tp",
    "fp", "fn"}, "per_image": {"f1", "object_dice", "object_hausdorff"}}``. When any
    result carries a BCE, ``per_image`` also has ``"bce"`` (mean over the images with
    probabilities) and ``"count_score"`` (mean over all images).
    """
    by_part: dict[str, list[ImageResult]] = {}
    for r in results:
        by_part.setdefault(r.part, []).append(r)
    with_bce = any(r.bce is not None for rs in by_part.values() for r in rs)
    out: dict[str, dict] = {}
    for part in PARTS:
        rs = by_part.get(part)
        if not rs:
            continue
        pooled = ObjectStats.pool(r.stats for r in rs)
        per = [r.stats.scores() for r in rs]
        entry = {
            "n_images": len(rs),
            "pooled": {**pooled.scores(), "tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn},
            "per_image": {k: _mean([p[k] for p in per]) for k in per[0]},
        }
        if with_bce:
            entry["per_image"]["bce"] = _mean([r.bce for r in rs if r.bce is not None])
            entry["per_image"]["count_score"] = _mean([r.count_score for r in rs])
        out[part] = entry
    return out


def score_pairs(items: Iterable[Item], *, empty_distance: float | None = None,
                split_gt: bool = False) -> dict:
    """Summary dict (see :func:`summarize`) of ``(stem, pred, gt[, prob])`` items.

    ``pred``/``gt``: label images ``(H, W)``, 0 = background; the part comes from the
    stem (``testA_3`` → testA, ``testB_*`` → testB, anything else → other).
    """
    return summarize(evaluate_pairs(items, empty_distance=empty_distance, split_gt=split_gt))


#: What ``parts`` of :func:`find_pairs` may name: the GlaS parts (``train_*``,
#: ``testA_*``, ``testB_*`` stems) and ``other`` (any other stem).
GT_PARTS = (*SPLITS, "other")


def find_pairs(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike,
               parts: Sequence[str] | None = None) -> list[tuple[str, Path, Path]]:
    """``(stem, prediction path, annotation path)`` for the ``<stem>_anno.*`` of ``gt_dir``.

    Predictions are ``<stem>.png``, ``.tif`` or ``.tiff`` in ``pred_dir``. ``parts``
    (of :data:`GT_PARTS`) chooses the annotations scored; by default those of every part
    that ``pred_dir`` holds at least one prediction of (a GlaS folder's training
    annotations are left out when only the test images were predicted; what is left out
    is logged). Every annotation of a scored part needs its prediction. Raises
    :class:`GlandsegError` for a missing folder, a folder without annotations (of the
    chosen parts), an unknown part, or missing predictions (all of them named).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not d.is_dir():
            raise GlandsegError(f"{d}: no such {what} folder")
    annos: dict[str, Path] = {}
    for p in gt_dir.iterdir():
        ext = p.suffix.lower()
        if ext not in LABEL_EXTS or not p.stem.endswith("_anno") or p.name.startswith("."):
            continue
        stem = p.stem[: -len("_anno")]
        old = annos.get(stem)
        if old is None or _GT_PREF.index(ext) < _GT_PREF.index(old.suffix.lower()):
            annos[stem] = p
    if not annos:
        raise GlandsegError(
            f"{gt_dir}: no annotations found (expected <stem>_anno.png|.bmp|.tif label images)"
        )
    annos = _annotations_of_parts(annos, pred_dir, gt_dir, parts)
    pairs, missing = [], []
    for stem in sorted(annos, key=_stem_key):
        found = [pred_dir / f"{stem}{e}" for e in PRED_EXTS if (pred_dir / f"{stem}{e}").is_file()]
        if not found:
            missing.append(f"{stem}.png")
            continue
        if len(found) > 1:
            log.warning("%s: several predictions, using %s", stem, found[0].name)
        pairs.append((stem, found[0], annos[stem]))
    if missing:
        raise GlandsegError(
            f"missing predictions in {pred_dir} ({len(missing)} of {len(annos)}): "
            + " ".join(missing)
            + " (expected <stem>.png|.tif|.tiff for every <stem>_anno.* in the truth folder)"
        )
    return pairs


def _has_prediction(pred_dir: Path, stem: str) -> bool:
    return any((pred_dir / f"{stem}{e}").is_file() for e in PRED_EXTS)


def _annotations_of_parts(annos: dict[str, Path], pred_dir: Path, gt_dir: Path,
                          parts: Sequence[str] | None) -> dict[str, Path]:
    """The annotations of the parts scored (see :func:`find_pairs`)."""
    by_part: dict[str, list[str]] = {}
    for stem in annos:
        by_part.setdefault(split_of(stem), []).append(stem)
    if parts is not None:
        unknown = [p for p in parts if p not in GT_PARTS]
        if unknown or not parts:
            raise GlandsegError(f"unknown part(s) {', '.join(unknown) or '(none)'}: choose "
                                f"from {', '.join(GT_PARTS)} (e.g. --parts testA,testB)")
        absent = [p for p in parts if p not in by_part]
        if absent:
            have = ", ".join(f"{p} ({len(by_part[p])})" for p in GT_PARTS if p in by_part)
            raise GlandsegError(f"{gt_dir}: no annotations of {', '.join(absent)} (it holds "
                                f"{have})")
        chosen = list(dict.fromkeys(parts))
    else:
        chosen = [p for p in GT_PARTS if p in by_part
                  and any(_has_prediction(pred_dir, s) for s in by_part[p])]
        if not chosen:  # nothing predicted at all: every annotation is missing
            return annos
        left = [p for p in GT_PARTS if p in by_part and p not in chosen]
        if left:
            log.info("scoring %s; not scored, no predictions of them in %s: %s (choose "
                     "with --parts)",
                     ", ".join(f"{p} ({len(by_part[p])} images)" for p in chosen), pred_dir,
                     ", ".join(f"{p} ({len(by_part[p])} annotations)" for p in left))
    return {s: a for s, a in annos.items() if split_of(s) in chosen}


def read_checked(path: Path, what: str) -> np.ndarray:
    """:func:`~glandseg.data.io.read_label` naming the file's role (``"prediction"`` or
    ``"annotation"``) in errors, with a warning naming the file if it does not look like a
    label image (:func:`~glandseg.data.io.implausible_label`)."""
    labels = read_label(path, what=what)
    why = implausible_label(labels)
    if why:
        log.warning("%s: this %s %s", path, what, why)
    return labels


def _read_pairs(pairs: list[tuple[str, Path, Path]], bad: list[str]) -> Iterator[Item]:
    for stem, pred_path, gt_path in pairs:
        pred, gt = read_checked(pred_path, "prediction"), read_checked(gt_path, "annotation")
        if pred.shape != gt.shape:
            bad.append(f"{pred_path.name} {pred.shape} vs {gt_path.name} {gt.shape}")
            continue
        if not bad:
            yield stem, pred, gt


def evaluate_dirs(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    empty_distance: float | None = None,
    split_gt: bool = False,
    parts: Sequence[str] | None = None,
) -> list[ImageResult]:
    """Per-image results for the annotations of ``gt_dir`` (see :func:`find_pairs`: by
    default the parts that ``pred_dir`` has predictions of, else ``parts``).

    Label files are 8/16/32-bit (read by :func:`glandseg.data.io.read_label`); images are
    read one pair at a time. Raises :class:`GlandsegError` naming every missing prediction
    or every prediction whose shape differs from its annotation.
    """
    pairs = find_pairs(pred_dir, gt_dir, parts)
    bad: list[str] = []
    results = evaluate_pairs(_read_pairs(pairs, bad), empty_distance=empty_distance,
                             split_gt=split_gt)
    if bad:
        raise GlandsegError("prediction shape differs from the annotation: " + "; ".join(bad))
    return results


def score_dirs(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    empty_distance: float | None = None,
    split_gt: bool = False,
) -> dict:
    """Summary dict (see :func:`summarize`) of the predictions in ``pred_dir``.

    For every ``<stem>_anno.<ext>`` in ``gt_dir`` reads ``<stem>.png|.tif|.tiff`` from
    ``pred_dir``. Raises :class:`GlandsegError` for missing or mis-shaped predictions.
    """
    return summarize(evaluate_dirs(pred_dir, gt_dir, empty_distance=empty_distance,
                                   split_gt=split_gt))


def per_image_table(results: Iterable[ImageResult | Item]) -> list[dict]:
    """One row per image for a CSV: stem, part, counts, TP/FP/FN and the image's scores.

    Accepts :class:`ImageResult` objects (from :func:`evaluate_pairs`) or raw items.
    Columns: ``stem, part, n_pred, n_gt, tp, fp, fn, f1, object_dice, object_hausdorff,
    pixel_dice, count_score, bce`` (``bce`` empty string without probabilities).
    """
    results = list(results)
    if results and not isinstance(results[0], ImageResult):
        results = evaluate_pairs(results)
    rows = []
    for r in results:
        s = r.stats
        rows.append(
            {
                "stem": r.stem,
                "part": r.part,
                "n_pred": s.n_pred,
                "n_gt": s.n_gt,
                "tp": s.tp,
                "fp": s.fp,
                "fn": s.fn,
                **s.scores(),
                "pixel_dice": r.pixel_dice,
                "count_score": r.count_score,
                "bce": "" if r.bce is None else r.bce,
            }
        )
    return rows


def format_table(summary: dict) -> str:
    """A plain-text table of a summary dict: part, n, pooled and per-image-mean scores."""
    head = (
        f"{'part':<6} {'n':>4}  {'F1':>6} {'ObjDice':>7} {'ObjHausd':>9}  |"
        f"  {'F1':>6} {'ObjDice':>7} {'ObjHausd':>9}  {'TP':>5} {'FP':>5} {'FN':>5}"
    )
    lines = [
        f"{'':<6} {'':>4}  {'pooled (official GlaS)':<24}  |  {'mean of per-image scores':<24}",
        head,
        "-" * len(head),
    ]
    for part, e in summary.items():
        p, m = e["pooled"], e["per_image"]
        lines.append(
            f"{part:<6} {e['n_images']:>4}  {p['f1']:>6.4f} {p['object_dice']:>7.4f} "
            f"{p['object_hausdorff']:>9.3f}  |  {m['f1']:>6.4f} {m['object_dice']:>7.4f} "
            f"{m['object_hausdorff']:>9.3f}  {p['tp']:>5} {p['fp']:>5} {p['fn']:>5}"
        )
    return "\n".join(lines)
