"""Image and mask stay aligned through every augmentation.

The synthetic image encodes each pixel's own coordinates: R = x, G = y (both < 256, so no
wrap-around) and B = 255 ("this is image, not fill"). The mask is a grid of rectangular
blocks with distinct ids (0 = background), kept away from the border. After any geometric
transform, the image at an output pixel decodes to the source position it was sampled from,
so the mask id there must be the id of the source block at that position. A flip, rotation,
crop, elastic field or resize applied to one of the two and not (or differently) to the
other moves the mask by whole blocks and fails.

Tolerance (measured, plus one pixel of margin): rotation, elastic, crop and flips are exact
(a bilinear resample of a linear ramp returns the sampled position, and the mask's nearest
neighbour is that position rounded), so ``TOL = 1`` px. ``scale_pair``/``resize_pad`` resize
the mask with torch's ``nearest`` (source pixel ``floor(i / s)``) but the image around the
pixel centre (``(i + 0.5) / s - 0.5``, antialiased when shrinking): the two differ by up to
``0.5 / s`` source px (1-2 px measured at s = 0.37, 1 px at s = 1.28 and 1.6), so those use
``ceil(0.5 / s) + 1``. Only pixels whose image values are not mixed with fill (B = 255)
are compared, so padding and rotated-in corners never count.
Colour transforms must leave the mask bit-identical.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from torchvision import tv_tensors
from torchvision.transforms import v2

from glandseg.data.transforms import (
    AugmentConfig,
    HEDJitter,
    SafeElastic,
    resize_pad,
    scale_pair,
    train_transform,
)

H, W = 150, 200
TOL = 1
#: Transform types of ``train_transform`` that only change colours (mask must be identical).
COLOUR_OPS = (HEDJitter, v2.ColorJitter)
#: Geometric transform types of ``train_transform`` (checked for alignment).
GEOMETRIC_OPS = (v2.RandomRotation, SafeElastic, v2.RandomCrop, v2.RandomHorizontalFlip,
                 v2.RandomVerticalFlip)


def coded_pair() -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Image ``uint8 (3, H, W)`` with R = x, G = y, B = 255, and a mask ``int64 (H, W)`` of
    a 4 x 5 grid of 22 x 28 px blocks with ids 1..20 (0 = background), 10 px from the border."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x, y, np.full_like(x, 255)]).astype(np.uint8)
    lab = np.zeros((H, W), np.int64)
    k = 0
    for r in range(4):
        for c in range(5):
            k += 1
            y0, x0 = 10 + r * 34, 10 + c * 38
            lab[y0 : y0 + 22, x0 : x0 + 28] = k
    return tv_tensors.Image(torch.from_numpy(img)), tv_tensors.Mask(torch.from_numpy(lab))


SRC_IMG, SRC_LAB = coded_pair()
N_IDS = int(SRC_LAB.max())


def _dilated_ids(tol: int) -> np.ndarray:
    """``bool (N_IDS + 1, H + 2 tol, W + 2 tol)``: block k dilated by ``tol`` px (square),
    padded by ``tol`` on each side so out-of-range decoded positions can be looked up."""
    lab = SRC_LAB.numpy()
    out = np.zeros((N_IDS + 1, H + 2 * tol, W + 2 * tol), bool)
    for k in range(N_IDS + 1):
        m = ndi.maximum_filter((lab == k).astype(np.uint8), size=2 * tol + 1) > 0
        out[k, tol : tol + H, tol : tol + W] = m
    return out


def misaligned(image: torch.Tensor, mask: torch.Tensor, tol: int = TOL) -> dict[str, float]:
    """Check ``mask`` against the source positions decoded from ``image``.

    Returns the counts of checked pixels and of failures in both directions:
    ``wrong_id``: a mask id (including 0) whose dilated source block does not contain the
    decoded position; ``missing``: a pixel decoding to the interior of a block (eroded by
    ``tol``) whose mask is not that block. Only pixels with B = 255 (no fill mixed in) count.
    """
    img = image.numpy().astype(np.int64)
    m = mask.numpy().astype(np.int64)
    assert img.shape[-2:] == m.shape[-2:]
    valid = img[2] == 255
    xs, ys = img[0][valid], img[1][valid]
    ids = m[valid]
    assert ids.min() >= 0 and ids.max() <= N_IDS, "mask ids outside the source's"
    dil = _dilated_ids(tol)
    wrong = ~dil[ids, ys + tol, xs + tol]
    # Interior of each block (eroded): the decoded position there must carry that block's id.
    src = SRC_LAB.numpy()
    interior = ndi.minimum_filter(src, size=2 * tol + 1)
    interior = np.where(ndi.maximum_filter(src, size=2 * tol + 1) == interior, interior, 0)
    want = interior[ys, xs]
    missing = (want > 0) & (ids != want)
    return {"checked": int(valid.sum()), "wrong_id": int(wrong.sum()),
            "missing": int(missing.sum()), "inner": int((want > 0).sum())}


def assert_aligned(image: torch.Tensor, mask: torch.Tensor, what: str, tol: int = TOL) -> None:
    r = misaligned(image, mask, tol)
    assert r["checked"] > 0.2 * image.shape[-1] * image.shape[-2], (what, r)
    assert r["inner"] > 0, (what, r)  # some block interiors are in view
    assert r["wrong_id"] == 0 and r["missing"] == 0, (what, r)


def test_untransformed_pair_is_aligned_and_a_flip_of_one_is_not() -> None:
    """The check itself: it passes on the source and fails when only one side moves."""
    assert_aligned(SRC_IMG, SRC_LAB, "identity")
    for dims in ((-1,), (-2,)):
        r = misaligned(SRC_IMG.flip(dims), SRC_LAB)
        assert r["wrong_id"] > 1000 and r["missing"] > 1000, (dims, r)
    shifted = torch.roll(SRC_LAB, shifts=(0, 2 * TOL + 1), dims=(0, 1))
    assert misaligned(SRC_IMG, shifted)["wrong_id"] > 100


def _forced(op: v2.Transform) -> v2.Transform:
    """A copy of ``op`` (unwrapping ``RandomApply``) that always applies."""
    op = copy.deepcopy(op)
    if isinstance(op, v2.RandomApply):
        assert len(op.transforms) == 1, op
        op = op.transforms[0]
    if hasattr(op, "p"):
        op.p = 1.0
    return op


def _pipeline_ops(cfg: AugmentConfig) -> list[v2.Transform]:
    return [_forced(op) for op in train_transform(cfg).transforms]


@pytest.mark.parametrize("crop", [96, 256])  # a crop inside the image, and a padding one
def test_every_op_of_train_transform_keeps_alignment(crop: int) -> None:
    ops = _pipeline_ops(AugmentConfig(crop=crop, elastic_p=1.0))
    kinds = [type(op) for op in ops]
    # Every op is known: a new augmentation must be added to one of the lists (and checked).
    assert all(issubclass(k, COLOUR_OPS + GEOMETRIC_OPS) for k in kinds), kinds
    assert set(kinds) == set(COLOUR_OPS + GEOMETRIC_OPS), kinds
    for op in ops:
        torch.manual_seed(0)
        for draw in range(6):
            img, lab = op(SRC_IMG, SRC_LAB)
            assert isinstance(lab, tv_tensors.Mask) and img.shape[-2:] == lab.shape[-2:]
            if isinstance(op, COLOUR_OPS):
                assert torch.equal(lab, SRC_LAB), type(op).__name__
                assert not torch.equal(img, SRC_IMG) or draw > 0
            else:
                if isinstance(op, v2.RandomCrop):
                    assert tuple(lab.shape) == (crop, crop)
                assert_aligned(img, lab, f"{type(op).__name__} draw {draw}")


@pytest.mark.parametrize("crop", [96, 256])
def test_train_transform_without_colour_keeps_alignment(crop: int) -> None:
    """The composed geometric pipeline, 30 random draws (rotation and elastic on 50 %)."""
    tf = train_transform(AugmentConfig(crop=crop, color=False, elastic_p=0.5))
    torch.manual_seed(123)
    for draw in range(30):
        img, lab = tf(SRC_IMG, SRC_LAB)
        assert tuple(lab.shape) == (crop, crop)
        r = misaligned(img, lab)
        assert r["wrong_id"] == 0 and r["missing"] == 0, (draw, r)
        assert r["checked"] > 0


def test_colour_ops_leave_the_mask_of_the_full_pipeline_identical() -> None:
    """Same seed, same geometry: the full pipeline's mask equals the colour-free one's
    (colour ops come last and draw their random numbers after the geometric ones)."""
    full = train_transform(AugmentConfig(crop=128, elastic_p=0.5))
    geo = train_transform(AugmentConfig(crop=128, color=False, elastic_p=0.5))
    changed = 0
    for seed in range(15):
        torch.manual_seed(seed)
        img_f, lab_f = full(SRC_IMG, SRC_LAB)
        torch.manual_seed(seed)
        img_g, lab_g = geo(SRC_IMG, SRC_LAB)
        assert torch.equal(lab_f, lab_g), seed
        changed += not torch.equal(img_f, img_g)
    assert changed >= 10  # the colour ops did change the images


@pytest.mark.parametrize("scale", [0.5, 0.37, 1.6, 2.0])
def test_scale_pair_keeps_alignment(scale: float) -> None:
    img, lab = scale_pair(SRC_IMG, SRC_LAB, scale)
    assert img.shape[-2:] == lab.shape[-2:] == (round(H * scale), round(W * scale))
    assert_aligned(img, lab, f"scale {scale}", tol=math.ceil(0.5 / scale) + 1)


@pytest.mark.parametrize("size", [100, 256, 320])
def test_resize_pad_keeps_alignment(size: int) -> None:
    img, lab, scale = resize_pad(SRC_IMG, SRC_LAB, size)
    assert img.shape[-2:] == lab.shape[-2:] == (size, size)
    # the padding is fill (B = 0) and background
    nh, nw = round(H * scale), round(W * scale)
    pad = np.ones((size, size), bool)
    pad[:nh, :nw] = False
    assert not img[2].numpy()[pad].any() and not lab.numpy()[pad].any()
    assert img[2].numpy()[~pad].min() > 0
    assert_aligned(img, lab, f"resize_pad {size}", tol=math.ceil(0.5 / scale) + 1)
