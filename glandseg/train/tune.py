"""Choose post-processing thresholds on the validation images.

Probabilities are predicted once per image, then a small grid of post-processing settings
is scored with the official pooled metrics; the objective is ``F1 + object Dice``.
"""

from __future__ import annotations

import itertools
import logging

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


def tune_postprocess(predictor: Predictor, val_data: list[tuple[str, np.ndarray, np.ndarray]],
                     grid: dict | None = None) -> tuple[dict, float]:
    """Best post-processing params on ``val_data`` = ``[(name, image uint8 (H,W,3),
    truth labels (H,W))]``. Returns ``(params, pooled object Dice at those params)``."""
    from glandseg.metrics.score import score_pairs

    grid = grid or GRIDS[predictor.task]
    probs = [(name, predictor.predict_proba(img), truth) for name, img, truth in val_data]
    keys = list(grid)
    best, best_obj, best_dice = None, -np.inf, 0.0
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        items = [(n, predictor.postprocess(p, params), t) for n, p, t in probs]
        m = next(iter(score_pairs(items).values()))["pooled"]
        obj = m["f1"] + m["object_dice"]
        if obj > best_obj:
            best, best_obj, best_dice = params, obj, m["object_dice"]
    log.debug("tuned %s → objective %.4f", best, best_obj)
    return best, float(best_dice)
