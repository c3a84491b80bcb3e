"""Choose post-processing thresholds on the validation images.

Probabilities are predicted once per image, then a small grid of post-processing settings
is scored with the official pooled metrics (:func:`glandseg.metrics.gridsearch.grid_search`,
shared with the Mask R-CNN tuning); the objective is ``F1 + object Dice``.
"""

from __future__ import annotations

import logging

import numpy as np

from glandseg.infer.predictor import Predictor
from glandseg.metrics.gridsearch import grid_search
from glandseg.models.config import POSTPROCESS, check_keys

log = logging.getLogger(__name__)

__all__ = ["GRIDS", "grid_search", "tune_postprocess"]

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
    truth labels (H,W))]`` for a dense model (task ``contour`` or ``binary``; Mask R-CNN:
    :func:`glandseg.infer.instances.tune_instances`). Probabilities are predicted once per
    image. A grid key that is not a parameter of the task is an error naming it. Returns
    ``(params, pooled object Dice at those params)``."""
    grid = grid or GRIDS[predictor.task]
    check_keys(f"tuning grid of task {predictor.task!r}", "", grid,
               POSTPROCESS[predictor.task].names())
    probs = [(name, predictor.predict_proba(img), truth) for name, img, truth in val_data]
    # parameters outside the grid (e.g. boundary_weight) keep the model's values, and are
    # returned with the rest so that a run saves what was scored
    mc = getattr(predictor, "model_config", None)
    base = mc.postprocess.as_dict() if mc is not None else None
    return grid_search(grid, probs, lambda p, _shape, params: predictor.postprocess(p, params),
                       base)
