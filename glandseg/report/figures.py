"""Figures: training curves and the best / average / worst image figure (the study's Fig. 4).

Drawn with matplotlib's object API (:class:`matplotlib.figure.Figure`, rendered by Agg),
never ``pyplot``, so no GUI backend or global state is involved; PNGs are written
atomically.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glandseg import GlandsegError
from glandseg.data.io import atomic_path

log = logging.getLogger(__name__)

#: Columns of a training ``metrics.csv`` that :func:`training_curves` knows by name.
CURVE_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_f1",
    "val_object_dice",
    "val_object_hausdorff",
)


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, out_png: str | os.PathLike) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    log.debug("wrote %s", out_png)


def _to_float(v: Any) -> float:
    if v is None:
        return math.nan
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(str(v).strip()) if str(v).strip() else math.nan
    except ValueError:
        return math.nan


def _read_rows(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise GlandsegError(f"{path}: file not found; expected a training metrics.csv")
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise GlandsegError(f"{path}: no rows; has training finished an epoch?")
        return rows
    return [dict(r) for r in source]


def training_curves(
    source: str | os.PathLike | Iterable[Mapping[str, Any]], out_png: str | os.PathLike
) -> None:
    """Plot loss curves and validation metrics per epoch into ``out_png``.

    ``source``: a ``metrics.csv`` path (columns ``epoch, train_loss, val_loss, val_f1,
    val_object_dice, val_object_hausdorff``) or its rows as dicts. Whichever columns exist
    are drawn: every ``*loss*`` column in the loss panel, other ``val_*`` scores (F1, object
    Dice, ...) in a score panel, ``*hausdorff*`` columns in their own panel (pixels, lower
    is better). Empty or non-numeric cells are skipped (e.g. validation every n epochs).
    Without an ``epoch`` column the row number is used.
    """
    rows = _read_rows(source)
    if not rows:
        raise GlandsegError("no training rows to plot")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    epochs = np.array(
        [_to_float(r.get("epoch")) if "epoch" in cols else i + 1 for i, r in enumerate(rows)]
    )

    def series(col: str) -> tuple[np.ndarray, np.ndarray] | None:
        y = np.array([_to_float(r.get(col)) for r in rows])
        ok = np.isfinite(y) & np.isfinite(epochs)
        return (epochs[ok], y[ok]) if ok.any() else None

    losses = [c for c in cols if "loss" in c.lower()]
    hausdorff = [c for c in cols if "hausdorff" in c.lower() and c not in losses]
    scores = [
        c for c in cols if c.lower().startswith("val_") and c not in losses and c not in hausdorff
    ]
    panels = [
        (title, ylabel, [(c, s) for c in group if (s := series(c)) is not None])
        for title, ylabel, group in (
            ("Loss", "loss", losses),
            ("Validation scores", "score (higher is better)", scores),
            ("Validation object Hausdorff", "pixels (lower is better)", hausdorff),
        )
    ]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise GlandsegError(
            f"nothing to plot: no numeric columns among {cols}; expected some of {CURVE_COLUMNS}"
        )
    fig = _new_figure(5.0 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, ylabel, lines) in zip(axes, panels, strict=True):
        for col, (x, y) in lines:
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=col)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, out_png)


@dataclass
class ImageRecord:
    """One scored test image for :func:`best_average_worst`.

    ``image``: ``uint8`` ``(H, W, 3)``; ``truth`` and ``pred``: ``(H, W)`` integer label
    images, 0 = background; ``scores``: metric name → value (e.g. ``object_dice``).
    """

    name: str
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    scores: dict[str, float] = field(default_factory=dict)


def _get(item: Any, attr: str) -> Any:
    if isinstance(item, Mapping):
        return item[attr]
    return getattr(item, attr)


def _score(item: Any, key: str) -> float:
    """The ``key`` score of a record: ``item.scores[key]``, ``item[key]`` or ``item.score``."""
    if isinstance(item, Mapping):
        if key in item:
            return _to_float(item[key])
        if isinstance(item.get("scores"), Mapping) and key in item["scores"]:
            return _to_float(item["scores"][key])
        if "score" in item:
            return _to_float(item["score"])
    else:
        scores = getattr(item, "scores", None)
        if isinstance(scores, Mapping) and key in scores:
            return _to_float(scores[key])
        if hasattr(item, key):
            return _to_float(getattr(item, key))
        if hasattr(item, "score"):
            return _to_float(item.score)
    raise KeyError(f"record {_get(item, 'name')!r} has no {key!r} score")


def pick_best_average_worst(
    items: Sequence[Any], key: str = "object_dice"
) -> list[tuple[str, Any, float]]:
    """``[("Best", item, score), ("Average", ...), ("Worst", ...)]`` by the ``key`` score.

    Higher is better unless ``key`` names a Hausdorff distance. "Average" is the image whose
    score is closest to the mean over images with a finite score.
    """
    scored = [(it, _score(it, key)) for it in items]
    scored = [(it, s) for it, s in scored if math.isfinite(s)]
    if not scored:
        raise GlandsegError(f"no image has a finite {key!r} score to pick best/average/worst")
    lower_better = "hausdorff" in key.lower()
    values = np.array([s for _, s in scored])
    best = int(np.argmin(values) if lower_better else np.argmax(values))
    worst = int(np.argmax(values) if lower_better else np.argmin(values))
    avg = int(np.argmin(np.abs(values - values.mean())))
    return [
        ("Best", scored[best][0], float(values[best])),
        ("Average", scored[avg][0], float(values[avg])),
        ("Worst", scored[worst][0], float(values[worst])),
    ]


def _labels_rgb(labels: np.ndarray, image: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Glands filled with their colour (blended, ``alpha``) and outlined, over the RGB image.

    Colours by gland id as in :func:`glandseg.report.outputs.overlay`. Returns ``uint8``
    ``(H, W, 3)``.
    """
    from glandseg.report.outputs import label_colors, overlay

    labels = np.asarray(labels)
    image = np.asarray(image, dtype=np.uint8)
    mask = labels > 0
    if not mask.any():
        return image
    ids, inverse = np.unique(labels[mask], return_inverse=True)
    fill = label_colors(ids)[inverse.reshape(-1)].astype(np.float32)
    out = image.copy()
    out[mask] = np.round((1 - alpha) * image[mask].astype(np.float32) + alpha * fill).astype(
        np.uint8
    )
    return overlay(out, labels, thickness=max(1, round(min(labels.shape) / 250)))


def best_average_worst(
    items: Sequence[Any], out_png: str | os.PathLike, key: str = "object_dice"
) -> list[tuple[str, str, float]]:
    """Draw the study's Fig. 4: best, average and worst image by the ``key`` score.

    ``items``: per-image records (:class:`ImageRecord`, or dicts / objects with ``name``,
    ``image`` (``uint8`` ``(H, W, 3)``), ``truth`` and ``pred`` (``(H, W)`` label images,
    0 = background) and the score as ``scores[key]``, ``key`` or ``score``). Writes a 3 x 3
    grid (rows: best, closest to the mean, worst; columns: image, ground truth, prediction,
    glands coloured over the image) to ``out_png``. Returns ``[(which, name, score)]``.
    """
    picks = pick_best_average_worst(items, key)
    fig = _new_figure(12.0, 10.5)
    axes = fig.subplots(3, 3, squeeze=False)
    for row, (which, item, score) in zip(axes, picks, strict=True):
        image = np.asarray(_get(item, "image"))
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        truth = np.asarray(_get(item, "truth"))
        pred = np.asarray(_get(item, "pred"))
        name = str(_get(item, "name"))
        panels = (
            (f"{which}: {name}, {key} = {score:.3f}", image),
            (
                f"ground truth ({len(np.unique(truth[truth > 0]))} glands)",
                _labels_rgb(truth, image),
            ),
            (f"prediction ({len(np.unique(pred[pred > 0]))} glands)", _labels_rgb(pred, image)),
        )
        for ax, (what, arr) in zip(row, panels, strict=True):
            ax.imshow(arr)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(what, fontsize="small")
    fig.suptitle(f"Best, average and worst test image by {key}")
    _save(fig, out_png)
    return [(which, str(_get(item, "name")), score) for which, item, score in picks]
