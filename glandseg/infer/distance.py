"""Watershed seeded by a predicted distance map (SDT-style), beside the contour seeds.

A model with a distance head predicts, beside background / interior / boundary, each gland
pixel's normalised distance to its gland's border (1 at the gland's deepest point, near 0
on its border: :func:`glandseg.train.gpu_data.normalised_distance` is the target). Seeds are
the connected regions where that distance exceeds ``seed_threshold``: one per gland
whatever its size, so large glands are not split and touching glands are cut along the
valley between their centres. The seeds grow by watershed on the negated distance within
the gland foreground (interior + boundary > ``foreground_threshold``), as
:func:`glandseg.infer.postprocess.contour_to_labels` grows its interior seeds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from glandseg.infer.postprocess import grow_seeds

#: The parameters of :func:`distance_to_labels` and their defaults.
DISTANCE_DEFAULTS = {"seed_threshold": 0.5, "foreground_threshold": 0.5, "min_area": 100,
                     "min_seed_area": 10, "fill_holes": True}

#: The grid chosen from on out-of-fold predictions (:mod:`glandseg.train.cv`).
DISTANCE_GRID = {
    "seed_threshold": [0.3, 0.4, 0.5, 0.6],
    "foreground_threshold": [0.4, 0.5],
    "min_area": [100, 300, 600],
    "min_seed_area": [10],
    "fill_holes": [True],
}


def distance_to_labels(probs: np.ndarray, distance: np.ndarray, seed_threshold: float = 0.5,
                       foreground_threshold: float = 0.5, min_area: int = 100,
                       min_seed_area: int = 10, fill_holes: bool = True) -> np.ndarray:
    """``probs`` float ``(3, H, W)`` (background, interior, boundary) and ``distance``
    float ``(H, W)`` in [0, 1] → labels ``int32 (H, W)``, 0 = background. Seeds: connected
    regions of ``distance > seed_threshold`` inside the foreground of at least
    ``min_seed_area`` px; foreground components without a seed become objects of their
    own; objects under ``min_area`` px are removed."""
    if probs.ndim != 3 or probs.shape[0] != 3 or distance.shape != probs.shape[1:]:
        raise ValueError(f"expected probs (3, H, W) and distance (H, W), got {probs.shape} and "
                         f"{distance.shape}")
    fg = (probs[1] + probs[2]) > foreground_threshold
    if fill_holes:
        fg = ndi.binary_fill_holes(fg)
    return grow_seeds(distance.astype(np.float32), (distance > seed_threshold) & fg, fg,
                      min_seed_area, min_area, fill_holes)
