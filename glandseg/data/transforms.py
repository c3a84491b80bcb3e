"""Joint augmentation of image and instance mask (and boxes) with ``torchvision.transforms.v2``.

Inputs are ``tv_tensors.Image`` (``uint8`` ``(3, H, W)``) and ``tv_tensors.Mask``
(``int64`` ``(H, W)``, 0 = background, 1..N = instances); masks are always resampled
with nearest neighbour, so instance ids survive every transform.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

log = logging.getLogger(__name__)

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, residual), rows normalised;
# the third row is replaced by H x E (as skimage does for its H-E-residual matrices).
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_RGB_FROM_HED[2] = torch.linalg.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


class HEDJitter(v2.Transform):
    """Random H&E stain perturbation (Tellez et al. 2018): per stain channel
    ``s' = s * alpha + beta`` in optical-density space. Only images are changed.
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.05) -> None:
        super().__init__()
        self.sigma, self.bias = sigma, bias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        alpha = 1 + (torch.rand(3) * 2 - 1) * self.sigma
        beta = (torch.rand(3) * 2 - 1) * self.bias
        return {"alpha": alpha, "beta": beta}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        was_uint8 = inpt.dtype == torch.uint8
        x = inpt.float() / 255.0 if was_uint8 else inpt.float()
        od = -torch.log(x.clamp(min=1e-6))  # (3, H, W) optical density
        hed = torch.einsum("chw,cd->dhw", od, _HED_FROM_RGB)
        hed = hed * params["alpha"][:, None, None] + params["beta"][:, None, None]
        rgb = torch.exp(-torch.einsum("dhw,dc->chw", hed, _RGB_FROM_HED)).clamp(0, 1)
        out = (rgb * 255).round().to(torch.uint8) if was_uint8 else rgb
        return tv_tensors.wrap(out, like=inpt)


class SafeElastic(v2.ElasticTransform):
    """:class:`v2.ElasticTransform` with the same random displacement field statistics,
    drawn on a coarse grid (one node per ``sigma`` px), smoothed and upsampled, instead of a
    full-resolution Gaussian blur: about 20x cheaper on a GlaS image. Inputs too small for
    the field are left unchanged."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        sigma = float(max(self.sigma))
        half = int(8 * sigma + 1) // 2 + 1
        if min(height, width) <= half:
            return {"skip": True}
        step = max(1.0, sigma)
        gh, gw = int(height / step) + 2, int(width / step) + 2
        noise = torch.rand(1, 2, gh, gw) * 2 - 1
        # Smooth on the coarse grid (sigma / step = 1 node), then upsample to the image.
        noise = F.gaussian_blur(noise, [5, 5], [1.0, 1.0])
        field = torch.nn.functional.interpolate(noise, size=(height, width), mode="bicubic",
                                                align_corners=False)
        # Match the spread of torchvision's field: uniform noise (std 1/sqrt(3)) blurred by a
        # 2-D Gaussian of width sigma has std 1 / (sqrt(3) * 2 sqrt(pi) sigma).
        field = field / field.std().clamp(min=1e-6) / (3**0.5 * 2 * math.pi**0.5 * sigma)
        dx = field[:, 0] * float(self.alpha[0]) / width
        dy = field[:, 1] * float(self.alpha[1]) / height
        displacement = torch.stack([dx, dy], dim=-1)  # (1, H, W, 2)
        return {"skip": False, "displacement": displacement}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["skip"]:
            return inpt
        return super().transform(inpt, {k: v for k, v in params.items() if k != "skip"})


@dataclass
class AugmentConfig:
    """Which augmentations to apply. ``crop``: square crop side in pixels (after scaling);
    images smaller than the crop are zero-padded (mask padded with 0 = background).
    ``strength`` (0-2) scales every random augmentation: 1 is the default pipeline, 0 only
    the crop; it multiplies the rotation and elastic probabilities (capped at 1), the
    elastic displacement and the stain/colour jitter magnitudes."""

    crop: int = 256
    flips: bool = True
    rotate: bool = True
    elastic: bool = True
    color: bool = True
    elastic_p: float = 0.3
    #: Acquisition robustness, off by default: stronger H&E stain jitter (each stain x0.8 to
    #: x1.2, p 0.5), Gaussian blur (sigma 0.3 to 2 px, p 0.5) and JPEG compression (quality
    #: 40 to 95, p 0.25); image only, the mask is never changed.
    robust: bool = False
    #: Probability of the stain and blur robustness augmentations (JPEG: half of it).
    robust_p: float = 0.5
    strength: float = 1.0


def train_transform(cfg: AugmentConfig) -> v2.Compose:
    """The training augmentation: the study's flips and random crop, plus rotation,
    elastic deformation and H&E colour jitter."""
    ops: list[v2.Transform] = []
    s = cfg.strength
    if s <= 0:
        return v2.Compose([v2.RandomCrop(cfg.crop, pad_if_needed=True, fill=0)])
    if cfg.rotate:
        # Bilinear for the image; v2 always resamples masks with nearest neighbour.
        rot = v2.RandomRotation(
            180,
            interpolation=v2.InterpolationMode.BILINEAR,
            fill={tv_tensors.Mask: 0, "others": 0},
        )
        ops.append(v2.RandomApply([rot], p=min(1.0, 0.5 * s)))
    if cfg.elastic:
        ops.append(v2.RandomApply([SafeElastic(alpha=40.0 * s, sigma=6.0)],
                                  p=min(1.0, cfg.elastic_p * s)))
    ops.append(v2.RandomCrop(cfg.crop, pad_if_needed=True, fill=0))
    if cfg.flips:
        ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if cfg.color:
        ops += [
            HEDJitter(0.05 * s, 0.05 * s),
            v2.ColorJitter(brightness=0.15 * s, contrast=0.15 * s, saturation=0.1 * s,
                           hue=min(0.5, 0.03 * s)),
        ]
    if cfg.robust:
        ops += robust_ops(cfg.robust_p)
    return v2.Compose(ops)


def robust_ops(p: float = 0.5) -> list[v2.Transform]:
    """The acquisition-robustness augmentations of :attr:`AugmentConfig.robust` (stain
    shifts of another lab, out-of-focus scans, JPEG exports), on ``uint8`` images: stain
    and blur each with probability ``p``, JPEG with ``p / 2``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"robust_p must be in [0, 1], got {p}")
    return [
        v2.RandomApply([HEDJitter(0.2, 0.02)], p=p),
        v2.RandomApply([v2.GaussianBlur(9, sigma=(0.3, 2.0))], p=p),
        v2.RandomApply([v2.JPEG((40, 95))], p=p / 2),
    ]


def _as_mask(mask: torch.Tensor) -> tuple[tv_tensors.Mask, bool]:
    """Wrap ``mask`` as a :class:`tv_tensors.Mask` (so 2-D masks use the mask kernels,
    which always resample with nearest neighbour); also say whether it was wrapped."""
    if isinstance(mask, tv_tensors.Mask):
        return mask, True
    return tv_tensors.Mask(mask), False


def _unwrap(mask: torch.Tensor, was_mask: bool) -> torch.Tensor:
    return mask if was_mask else mask.as_subclass(torch.Tensor)


def resize_pad(
    image: torch.Tensor, mask: torch.Tensor | None, size: int
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Aspect-preserving resize so the longer side is ``size``, then zero-pad to
    ``size × size`` (bottom/right). Returns ``(image, mask, scale)``; the mask
    (``(H, W)`` or ``(N, H, W)``) is resized with nearest neighbour so ids are kept."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    image = F.resize(image, [nh, nw], antialias=True)
    image = F.pad(image, [0, 0, size - nw, size - nh], fill=0)
    if mask is not None:
        m, was_mask = _as_mask(mask)
        m = F.resize(m, [nh, nw], interpolation=v2.InterpolationMode.NEAREST)
        m = F.pad(m, [0, 0, size - nw, size - nh], fill=0)
        mask = _unwrap(m, was_mask)
    return image, mask, scale


def scale_pair(
    image: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rescale image (bilinear, antialiased) and mask (nearest; ``(H, W)`` or
    ``(N, H, W)``) by ``scale``. Types (plain tensor or tv_tensor) are kept."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if scale == 1.0:
        return image, mask
    h, w = image.shape[-2:]
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    # F.resize keeps tv_tensor types itself and treats plain tensors as images.
    image = F.resize(image, size, antialias=True)
    if mask is not None:
        m, was_mask = _as_mask(mask)
        mask = _unwrap(F.resize(m, size, interpolation=v2.InterpolationMode.NEAREST), was_mask)
    return image, mask


def masks_to_boxes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Instance label mask ``(H, W)`` → ``(boxes (N, 4) xyxy float, masks (N, H, W) uint8,
    ids (N,))``. Degenerate instances (box narrower or lower than 2 px) are skipped."""
    ids = torch.unique(mask)
    ids = ids[ids > 0]
    if ids.numel() == 0:
        h, w = mask.shape[-2:]
        return torch.zeros((0, 4)), torch.zeros((0, h, w), dtype=torch.uint8), ids
    binary = (mask[None] == ids[:, None, None]).to(torch.uint8)
    boxes = _boxes(binary)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
    return boxes[keep].float(), binary[keep], ids[keep]


def _boxes(binary: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import masks_to_boxes as mtb

    b = mtb(binary)
    b[:, 2:] += 1  # pixel-edge convention: x2, y2 exclusive
    return b
