"""BASELINE ONLY: the augmentation code as it was before commit a5af239, vendored unchanged.

Commit a5af239 ("Faster augmentation") replaced two functions; ``bench_data.py`` times the
old ones against the new ones in the same run. Nothing in glandseg uses this file.

- :class:`OldSafeElastic`: ``git show a5af239~1:glandseg/data/transforms.py`` —
  torchvision's full-resolution elastic field (a Gaussian blur of kernel ``8 sigma + 1`` over
  the whole image per sample).
- :func:`old_unet_weight_map`: ``git show a5af239~1:glandseg/models/targets.py`` — one
  Euclidean distance transform of the whole image per object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torchvision.transforms import v2

from glandseg.models.targets import class_balance_weights, contour_target


class OldSafeElastic(v2.ElasticTransform):
    """:class:`v2.ElasticTransform` that leaves inputs unchanged when they are too small for
    its Gaussian kernel (torchvision's reflect padding fails on sides under ~4 sigma)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        half = int(8 * max(self.sigma) + 1) // 2 + 1
        if min(height, width) <= half:
            return {"skip": True}
        return {"skip": False, **super().make_params(flat_inputs)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["skip"]:
            return inpt
        return super().transform(inpt, {k: v for k, v in params.items() if k != "skip"})


def old_unet_weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                        max_objects: int = 64) -> np.ndarray:
    """Ronneberger's weight map, ``float32 (H, W)``. Distances are computed on the whole
    image per object (EDT of each object's complement); beyond ``max_objects`` the
    smallest objects are ignored for the border term."""
    lab = np.asarray(labels)
    fg = lab > 0
    w = class_balance_weights(fg)  # unchanged since then: shared
    ids, counts = np.unique(lab[fg], return_counts=True)
    if len(ids) < 2:
        return w
    ids = ids[np.argsort(-counts)][:max_objects]
    dists = np.stack([ndi.distance_transform_edt(lab != i) for i in ids]).astype(np.float32)
    d = np.partition(dists, 1, axis=0)[:2]
    border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    w[~fg] += border[~fg]
    return w


class OldTargetMaker:
    """The dense targets of :class:`glandseg.models.targets.TargetMaker` (contour task with
    weight map) computed with :func:`old_unet_weight_map`."""

    def __init__(self, boundary_width: int, w0: float, sigma: float) -> None:
        self.boundary_width, self.w0, self.sigma = boundary_width, w0, sigma

    def __call__(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        lab = labels.numpy()
        return {"target": torch.from_numpy(contour_target(lab, self.boundary_width)),
                "weight": torch.from_numpy(old_unet_weight_map(lab, self.w0, self.sigma))}
