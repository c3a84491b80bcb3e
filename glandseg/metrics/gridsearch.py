"""Choose post-processing parameters by the official metrics: one grid search for every
model (U-Net probability maps, Mask R-CNN detections).

The model's output is computed once per image by the caller; each setting of the grid turns
those outputs into label images (a callback) that are scored with the official pooled GlaS
metrics. Knows nothing of models or training (imports only :mod:`glandseg.metrics`), so both
the training engine and inference can use it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from glandseg.metrics.score import score_pairs

log = logging.getLogger(__name__)

#: ``to_labels(model output, (H, W), params) → labels int32 (H, W)`` (0 = background).
ToLabels = Callable[[object, tuple[int, int], dict], np.ndarray]


def grid_search(grid: Mapping[str, Sequence], cached: list[tuple[str, object, np.ndarray]],
                to_labels: ToLabels, base: Mapping | None = None) -> tuple[dict, float]:
    """Score every setting of ``grid`` with the official pooled metrics.

    ``cached``: ``[(name, model output computed once, truth labels (H, W))]``;
    ``to_labels(output, (H, W), params)`` → labels. Each setting is ``base`` updated with
    one combination of the grid (the first best wins ties). The objective is
    ``F1 + object Dice``. Returns ``(best params, pooled object Dice at those params)``.
    """
    keys = list(grid)
    empty = [k for k in keys if not len(grid[k])]
    if empty:
        raise ValueError(f"grid values for {', '.join(empty)} are empty")
    best, best_obj, best_dice = dict(base or {}), -np.inf, 0.0
    for values in itertools.product(*(grid[k] for k in keys)):
        params = {**(base or {}), **dict(zip(keys, values, strict=True))}
        items = [(n, to_labels(out, t.shape[:2], params), t) for n, out, t in cached]
        m = next(iter(score_pairs(items).values()))["pooled"]
        obj = m["f1"] + m["object_dice"]
        if obj > best_obj:
            best, best_obj, best_dice = params, obj, m["object_dice"]
    log.debug("tuned %s → objective %.4f", best, best_obj)
    return best, float(best_dice)
