"""What differs between model families during training, behind one small interface.

A *task* knows how to make targets from label images, collate a batch, and compute the
loss. ``DenseTask`` serves the U-Nets (``binary`` and ``contour`` targets);
``InstanceTask`` (Mask R-CNN) lives in :mod:`glandseg.models.maskrcnn`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from glandseg.models.targets import TargetMaker

log = logging.getLogger(__name__)


class DenseTask:
    """Per-pixel targets and losses for the U-Nets.

    ``binary``: BCE (weighted by Ronneberger's map) on a 1-channel logit, as in the study.
    ``contour``: weighted cross-entropy over background/interior/boundary plus a soft Dice
    term on the gland foreground and interior (helps the thin boundary class).
    """

    def __init__(self, task: str, boundary_width: int = 2, weight_map: bool = True,
                 dice_weight: float = 0.5, sigma: float = 5.0) -> None:
        self.task = task
        self.target_fn = TargetMaker(task, boundary_width, weight_map, sigma=sigma)
        self.dice_weight = dice_weight

    def collate(self, items: list[dict]) -> dict:
        out = {"image": torch.stack([it["image"] for it in items]),
               "target": torch.stack([it["target"] for it in items])}
        if "weight" in items[0]:
            out["weight"] = torch.stack([it["weight"] for it in items])
        return out

    def loss(self, model: nn.Module, batch: dict, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        x = (batch["image"] - mean) / std
        logits = model(x)
        w = batch.get("weight")
        if self.task == "binary":
            raw = F.binary_cross_entropy_with_logits(logits, batch["target"], reduction="none")[:, 0]
            return (raw * w).mean() if w is not None else raw.mean()
        t = batch["target"]
        ce = F.cross_entropy(logits, t, reduction="none")
        ce = (ce * w).mean() if w is not None else ce.mean()
        p = torch.softmax(logits.float(), dim=1)
        dice = 0.0
        for probs, truth in ((p[:, 1] + p[:, 2], (t > 0).float()), (p[:, 1], (t == 1).float())):
            inter = (probs * truth).sum()
            dice = dice + 1 - (2 * inter + 1) / (probs.sum() + truth.sum() + 1)
        return ce + self.dice_weight * dice / 2

    def val_loss(self, probs, truth, cfg: dict) -> float:
        """Negative log-likelihood of the full-resolution truth under the predicted
        probabilities (``probs`` float ``(C, H, W)``, ``truth`` labels ``(H, W)``)."""
        import numpy as np

        from glandseg.models.targets import contour_target

        eps = 1e-6
        if self.task == "binary":
            p = np.clip(probs[0], eps, 1 - eps)
            fg = truth > 0
            return float(-(np.log(p[fg]).sum() + np.log(1 - p[~fg]).sum()) / truth.size)
        scale = cfg["preprocess"]["scale"]
        width = max(1, round(self.target_fn.boundary_width / scale))
        t = contour_target(truth, width)
        p = np.take_along_axis(probs, t[None], axis=0)[0]
        return float(-np.log(np.clip(p, eps, 1)).mean())
