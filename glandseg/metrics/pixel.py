"""Pixel-level metrics and the study's object count score.

Label images are 2-D integer arrays ``(H, W)``, 0 = background; a boolean mask is
accepted wherever a label image is (``True`` = foreground).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["pixel_dice", "bce", "count_objects", "count_score"]

BCE_EPS = 1e-7


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


def pixel_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of the foreground ``pred > 0`` vs ``gt > 0`` (arrays of one shape).

    ``2 |A ∩ B| / (|A| + |B|)``; 1.0 when both are empty.
    """
    a = np.asarray(pred) > 0
    b = np.asarray(gt) > 0
    _same_shape(a, b, "pixel_dice")
    denom = int(a.sum()) + int(b.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / denom


def bce(prob: np.ndarray, gt: np.ndarray, eps: float = BCE_EPS) -> float:
    """Mean binary cross-entropy (nats per pixel) of foreground probabilities.

    ``prob``: float array ``(H, W)`` of foreground probabilities in [0, 1], clipped
    to ``[eps, 1 - eps]`` so a confident mistake costs ``-log(eps)`` and not infinity;
    ``gt``: label image or mask of the same shape, target = ``gt > 0``.
    Raises ``ValueError`` for NaN or values outside [0, 1] (logits are not probabilities).
    """
    p = np.asarray(prob, dtype=np.float64)
    t = np.asarray(gt) > 0
    _same_shape(p, t, "bce")
    if p.size == 0:
        raise ValueError("bce: empty arrays")
    if np.isnan(p).any():
        raise ValueError("bce: probabilities contain NaN")
    lo, hi = float(p.min()), float(p.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"bce: probabilities must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] "
            "(apply a sigmoid to logits first)"
        )
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(t, np.log(p), np.log1p(-p))))


def count_objects(labels: np.ndarray) -> int:
    """Number of distinct non-zero ids of a label image (ids as given, not relabelled)."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return int(arr.any())
    ids = np.unique(arr)
    return int(np.count_nonzero(ids))


def count_score(n_pred: int, n_gt: int) -> float:
    """The study's count score ``min(n_pred / n_gt, n_gt / n_pred)`` in [0, 1].

    1.0 when both counts are 0; 0.0 when exactly one is.
    """
    if n_pred < 0 or n_gt < 0:
        raise ValueError(f"count_score: counts must be non-negative, got {n_pred}, {n_gt}")
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    return min(n_pred / n_gt, n_gt / n_pred)
