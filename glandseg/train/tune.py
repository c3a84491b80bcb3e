"""Choose post-processing thresholds on the validation images.

Probabilities are predicted once per image, then a small grid of post-processing settings
is scored with the official pooled metrics; the objective is ``F1 + object Dice``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import numpy as np

from glandseg.infer.predictor import Predictor

log = logging.getLogger(__name__)

GRIDS = {
    "contour": {
        "interior_threshold": [0.4, 0.5, 0.6, 0.7],
        "foreground_threshold": [0.4, 0.5],
        "min_area": [100, 300, 600],
        "min_seed_area": [30],
        "fill_holes": [True],
    },
    "binary": {
        "foreground_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
        "split_h": [0.0, 2.0, 4.0, 8.0],
        "min_area": [100, 300, 600],
        "fill_holes": [True],
    },
}


def grid_search(grid: dict, cached: list[tuple[str, object, np.ndarray]],
                to_labels: Callable[[object, tuple[int, int], dict], np.ndarray],
                base: dict | None = None) -> tuple[dict, float]:
    """Score every setting of ``grid`` with the official pooled metrics.

    ``cached``: ``[(name, model output computed once, truth labels (H, W))]``;
    ``to_labels(output, (H, W), params)`` → labels. Each setting is ``base`` updated with
    one combination of the grid. The objective is ``F1 + object Dice``. Returns
    ``(best params, pooled object Dice at those params)``.
    """
    from glandseg.metrics.score import score_pairs

    keys = list(grid)
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


def tune_postprocess(predictor: Predictor, val_data: list[tuple[str, np.ndarray, np.ndarray]],
                     grid: dict | None = None) -> tuple[dict, float]:
    """Best post-processing params on ``val_data`` = ``[(name, image uint8 (H,W,3),
    truth labels (H,W))]``. Probabilities are predicted once per image. Returns
    ``(params, pooled object Dice at those params)``."""
    probs = [(name, predictor.predict_proba(img), truth) for name, img, truth in val_data]
    return grid_search(grid or GRIDS[predictor.task], probs,
                       lambda p, _shape, params: predictor.postprocess(p, params))
