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

    ``consistency`` > 0 adds a blur-consistency term: each batch is also seen out of focus
    (Gaussian blur, sigma drawn per image from ``BLUR_SIGMA``), both views are supervised,
    and the blurred view's per-pixel class distribution is pulled towards the sharp view's
    (KL divergence, no gradient through the sharp view), weighted by ``consistency``. Costs a
    second forward/backward pass per batch.
    """

    #: Range of the blur sigma (px at the working scale) of the consistency view.
    BLUR_SIGMA = (0.5, 2.0)

    def __init__(self, task: str, boundary_width: int = 2, weight_map: bool = True,
                 dice_weight: float = 0.5, sigma: float = 5.0, consistency: float = 0.0) -> None:
        self.task = task
        self.target_fn = TargetMaker(task, boundary_width, weight_map, sigma=sigma)
        self.dice_weight = dice_weight
        self.consistency = consistency

    def collate(self, items: list[dict]) -> dict:
        out = {"image": torch.stack([it["image"] for it in items]),
               "target": torch.stack([it["target"] for it in items])}
        if "weight" in items[0]:
            out["weight"] = torch.stack([it["weight"] for it in items])
        if "valid" in items[0]:  # GeoJSON Ignore*/Region*: 0 = no loss at that pixel
            out["valid"] = torch.stack([it["valid"] for it in items])
        return out

    def loss(self, model: nn.Module, batch: dict, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Training loss of ``batch`` (``image`` float ``(B, 3, H, W)`` in [0, 1], ``target``,
        optional ``weight``): supervised loss, plus the blur-consistency term when on."""
        x = (batch["image"] - mean) / std
        if self.consistency <= 0:
            return self.supervised(model(x), batch)
        xb = (blur_batch(batch["image"], self.BLUR_SIGMA) - mean) / std
        sharp, blurred = model(torch.cat([x, xb])).chunk(2)
        sup = (self.supervised(sharp, batch) + self.supervised(blurred, batch)) / 2
        return sup + self.consistency * self.divergence(sharp.detach(), blurred)

    def divergence(self, target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Mean per-pixel KL(target || prediction) of the class distributions (sigmoid for
        ``binary``, softmax over the 3 classes for ``contour``)."""
        eps = 1e-6
        if self.task == "binary":
            t = torch.sigmoid(target_logits.float()).clamp(eps, 1 - eps)
            lp, lq = F.logsigmoid(logits.float()), F.logsigmoid(-logits.float())
            kl = t * (t.log() - lp) + (1 - t) * ((1 - t).log() - lq)
            return kl.mean()
        t = torch.softmax(target_logits.float(), dim=1)
        kl = (t * (t.clamp_min(eps).log() - torch.log_softmax(logits.float(), dim=1))).sum(1)
        return kl.mean()

    def supervised(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Weighted BCE (``binary``) or weighted cross-entropy + soft Dice (``contour``).

        ``batch["valid"]`` (float ``(B, H, W)``, optional): pixels at 0 add nothing to
        either term (GeoJSON ``Ignore*`` polygons, outside ``Region*`` polygons); the
        per-pixel terms are averaged over the valid pixels."""
        w = batch.get("weight")
        valid = batch.get("valid")
        if valid is not None:
            w = valid if w is None else w * valid
        n = valid.sum().clamp(min=1.0) if valid is not None else None

        def mean(raw: torch.Tensor) -> torch.Tensor:
            raw = raw * w if w is not None else raw
            return raw.mean() if n is None else raw.sum() / n

        if self.task == "binary":
            raw = F.binary_cross_entropy_with_logits(logits, batch["target"], reduction="none")[:, 0]
            return mean(raw)
        t = batch["target"]
        ce = mean(F.cross_entropy(logits, t, reduction="none"))
        p = torch.softmax(logits.float(), dim=1)
        dice = 0.0
        for probs, truth in ((p[:, 1] + p[:, 2], (t > 0).float()), (p[:, 1], (t == 1).float())):
            if valid is not None:
                probs, truth = probs * valid, truth * valid
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


def blur_batch(images: torch.Tensor, sigma: tuple[float, float]) -> torch.Tensor:
    """Each image of ``float (B, C, H, W)`` blurred with its own Gaussian sigma drawn
    uniformly from ``sigma`` (kernel 9 px, as the ``--robust`` augmentation), on the
    images' device."""
    from torchvision.transforms.v2 import functional as TF

    lo, hi = sigma
    s = torch.empty(images.shape[0]).uniform_(lo, hi).tolist()
    return torch.stack([TF.gaussian_blur(im, [9, 9], [si, si]) for im, si in zip(images, s, strict=True)])
