"""Label image → model targets.

- ``binary``: foreground mask, the study's U-Net target (1 channel, sigmoid, BCE).
- ``contour``: 3 classes per pixel, 0 = background, 1 = gland interior, 2 = gland boundary
  (a band of ``boundary_width`` px inside each gland's border), so touching glands are
  separated by their boundary class.
- ``weight``: Ronneberger et al.'s weight map ``w = w_c + w0·exp(-(d1 + d2)² / 2σ²)``,
  ``d1``/``d2`` the distances to the nearest and second-nearest gland, ``w_c`` balancing
  class frequencies; it stresses the thin gaps between neighbouring glands.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi


def boundary_band(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Bool ``(H, W)``: pixels of a gland within ``width`` px (city-block) of its border,
    including borders between two touching glands. ``labels``: int ``(H, W)``, 0 = bg."""
    lab = labels
    border = np.zeros(lab.shape, dtype=bool)
    # A pixel is on the border if any 4-neighbour has a different label.
    border[:-1] |= lab[:-1] != lab[1:]
    border[1:] |= lab[1:] != lab[:-1]
    border[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    border[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    border &= lab > 0
    if width > 1:
        border = ndi.binary_dilation(border, iterations=width - 1) & (lab > 0)
    return border


def contour_target(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """``int64 (H, W)`` classes: 0 background, 1 interior, 2 boundary band."""
    t = (labels > 0).astype(np.int64)
    t[boundary_band(labels, width)] = 2
    return t


def class_balance_weights(fg: np.ndarray) -> np.ndarray:
    """Class-balance term of Ronneberger's weight map, ``float32`` like ``fg`` (bool, True =
    gland): ``w_c(x) = 0.5 / frequency of x's class``, normalised to mean 1 (all ones when
    one class is absent)."""
    n_fg = int(fg.sum())
    w = np.ones(fg.shape, dtype=np.float32)
    if 0 < n_fg < fg.size:
        w[fg] = 0.5 * fg.size / n_fg
        w[~fg] = 0.5 * fg.size / (fg.size - n_fg)
        w /= w.mean()
    return w


def unet_weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                    max_objects: int = 64) -> np.ndarray:
    """Ronneberger's weight map, ``float32 (H, W)``.

    The border term ``w0·exp(-(d1 + d2)² / 2σ²)`` is below ``w0·e⁻⁸`` once ``d1 + d2`` exceeds
    4σ, so each object's distance map is computed only in its bounding box grown by 4σ
    (exact inside it); beyond ``max_objects`` the smallest objects are ignored.
    """
    lab = np.asarray(labels)
    fg = lab > 0
    w = class_balance_weights(fg)
    ids, counts = np.unique(lab[fg], return_counts=True)
    if len(ids) < 2:
        return w
    ids = ids[np.argsort(-counts)][:max_objects]
    reach = int(np.ceil(4 * sigma))
    d1 = np.full(lab.shape, np.inf, dtype=np.float32)
    d2 = np.full(lab.shape, np.inf, dtype=np.float32)
    H, W = lab.shape
    for i in ids:
        ys, xs = np.nonzero(lab == i)
        y0, y1 = max(0, ys.min() - reach), min(H, ys.max() + 1 + reach)
        x0, x1 = max(0, xs.min() - reach), min(W, xs.max() + 1 + reach)
        d = ndi.distance_transform_edt(lab[y0:y1, x0:x1] != i).astype(np.float32)
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        b[...] = np.minimum(b, np.maximum(a, d))
        a[...] = np.minimum(a, d)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    w[~fg] += border[~fg]
    return w


class TargetMaker:
    """Picklable ``labels tensor → dict`` of targets, given to :class:`GlasDataset`.

    ``task``: ``"binary"`` or ``"contour"``; ``weight_map``: add Ronneberger weights.
    """

    def __init__(self, task: str = "contour", boundary_width: int = 2, weight_map: bool = True,
                 w0: float = 10.0, sigma: float = 5.0) -> None:
        if task not in ("binary", "contour"):
            raise ValueError(f"unknown task {task!r}")
        self.task, self.boundary_width, self.weight_map = task, boundary_width, weight_map
        self.w0, self.sigma = w0, sigma

    def __call__(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        lab = labels.numpy()
        if self.task == "binary":
            target = torch.from_numpy((lab > 0).astype(np.float32))[None]
        else:
            target = torch.from_numpy(contour_target(lab, self.boundary_width))
        out = {"target": target}
        if self.weight_map:
            out["weight"] = torch.from_numpy(unet_weight_map(lab, self.w0, self.sigma))
        return out
