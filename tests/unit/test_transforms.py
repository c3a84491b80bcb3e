"""Augmentations keep instance ids (no new ids, integer masks), crops pad, resize_pad keeps
the aspect ratio, boxes contain their masks, HEDJitter touches only the image."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from glandseg.data.transforms import (
    AugmentConfig,
    HEDJitter,
    SafeElastic,
    masks_to_boxes,
    resize_pad,
    scale_pair,
    train_transform,
)


def _pair(h: int = 64, w: int = 80, n: int = 6) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    lab = torch.zeros((h, w), dtype=torch.int64)
    for k in range(n):
        y, x = 4 + (k % 2) * (h // 2), 4 + (k // 2) * (w // 3)
        lab[y : y + h // 3, x : x + w // 4] = 10 * (k + 1)  # sparse, non-consecutive ids
    return tv_tensors.Image(img), tv_tensors.Mask(lab)


def _assert_ids_kept(before: torch.Tensor, after: torch.Tensor) -> None:
    assert after.dtype == torch.int64 and not after.is_floating_point()
    assert set(after.unique().tolist()) <= set(before.unique().tolist())


ALL_OPS = {
    "hflip": v2.RandomHorizontalFlip(p=1.0),
    "vflip": v2.RandomVerticalFlip(p=1.0),
    "rotate": v2.RandomRotation(180, interpolation=v2.InterpolationMode.BILINEAR),
    "elastic": SafeElastic(alpha=200.0, sigma=4.0),
    "crop": v2.RandomCrop(32),
    "train": train_transform(AugmentConfig(crop=48, elastic_p=1.0)),
}


@pytest.mark.parametrize("name", list(ALL_OPS))
def test_instance_ids_survive(name: str) -> None:
    torch.manual_seed(1)
    image, mask = _pair()
    for _ in range(5):
        out_img, out_mask = ALL_OPS[name](image, mask)
        assert isinstance(out_mask, tv_tensors.Mask) and out_img.dtype == torch.uint8
        assert out_img.shape[-2:] == out_mask.shape[-2:]
        _assert_ids_kept(mask, out_mask)


def test_flip_keeps_every_id_exactly() -> None:
    image, mask = _pair()
    _, out = v2.RandomHorizontalFlip(p=1.0)(image, mask)
    assert torch.equal(out, mask.flip(-1))


def test_crop_pads_small_images() -> None:
    image, mask = _pair(20, 25)
    cfg = AugmentConfig(crop=48, rotate=False, elastic=False)
    out_img, out_mask = train_transform(cfg)(image, mask)
    assert out_img.shape == (3, 48, 48) and out_mask.shape == (48, 48)
    # The whole small image fits in the crop: every instance pixel is kept, padding is 0.
    for i in mask.unique().tolist():
        if i:
            assert (out_mask == i).sum() == (mask == i).sum()
    assert (out_mask == 0).sum() == 48 * 48 - (mask > 0).sum()
    # With rotation and elastic deformation on as well, the output is still padded.
    out_img, out_mask = train_transform(AugmentConfig(crop=48, elastic_p=1.0))(image, mask)
    assert out_img.shape == (3, 48, 48) and out_mask.shape == (48, 48)


def test_small_image_elastic_is_safe() -> None:
    image, mask = _pair(10, 12, n=2)
    out_img, out_mask = SafeElastic(alpha=40.0, sigma=6.0)(image, mask)
    assert torch.equal(out_mask, mask) and torch.equal(out_img, image)


@pytest.mark.parametrize("shape", [(60, 120), (120, 60), (50, 50)])
@pytest.mark.parametrize("wrap", [False, True])
def test_resize_pad_keeps_aspect(shape: tuple[int, int], wrap: bool) -> None:
    image, mask = _pair(*shape)
    m = mask if wrap else mask.as_subclass(torch.Tensor)
    out_img, out_mask, scale = resize_pad(image, m, 64)
    assert out_img.shape == (3, 64, 64) and out_mask is not None and out_mask.shape == (64, 64)
    assert isinstance(out_mask, tv_tensors.Mask) == wrap
    h, w = shape
    assert scale == pytest.approx(64 / max(h, w))
    nh, nw = round(h * scale), round(w * scale)
    # Content only in the top-left nh x nw block, aspect ratio kept.
    assert out_img[:, nh:, :].sum() == 0 and out_img[:, :, nw:].sum() == 0
    assert nw / nh == pytest.approx(w / h, rel=0.05)
    _assert_ids_kept(mask, out_mask)
    assert resize_pad(image, None, 64)[1] is None


def test_scale_pair_2d_and_3d_masks() -> None:
    image, mask = _pair(40, 60)
    img2, m2 = scale_pair(image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor), 0.5)
    assert img2.shape == (3, 20, 30) and m2 is not None and m2.shape == (20, 30)
    assert type(m2) is torch.Tensor
    _, m3 = scale_pair(image, mask[None], 0.5)
    assert m3 is not None and m3.shape == (1, 20, 30)
    _assert_ids_kept(mask, m3)
    same = scale_pair(image, mask, 1.0)
    assert same[0] is image and same[1] is mask
    with pytest.raises(ValueError):
        scale_pair(image, mask, 0)


def test_masks_to_boxes_contain_masks() -> None:
    _, mask = _pair()
    mask = mask.as_subclass(torch.Tensor).clone()
    mask[0, 0] = 99  # a 1-pixel instance: degenerate, skipped
    boxes, masks, ids = masks_to_boxes(mask)
    assert 99 not in ids.tolist() and len(ids) == 6
    assert boxes.dtype == torch.float32 and masks.dtype == torch.uint8
    for box, m, i in zip(boxes, masks, ids, strict=True):
        assert torch.equal(m.bool(), mask == i)
        ys, xs = torch.nonzero(m, as_tuple=True)
        x1, y1, x2, y2 = box.tolist()
        assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2
        assert x2 - x1 == xs.max() - xs.min() + 1  # tight, x2 exclusive
    boxes, masks, ids = masks_to_boxes(torch.zeros((5, 7), dtype=torch.int64))
    assert boxes.shape == (0, 4) and masks.shape == (0, 5, 7) and ids.numel() == 0


def test_hed_jitter_changes_only_the_image() -> None:
    torch.manual_seed(0)
    image, mask = _pair()
    out_img, out_mask = HEDJitter(0.2, 0.2)(image, mask)
    assert torch.equal(out_mask, mask)
    assert out_img.dtype == torch.uint8 and out_img.shape == image.shape
    assert not torch.equal(out_img, image)


def test_hed_jitter_identity_round_trip() -> None:
    image, _ = _pair()
    out = HEDJitter(0.0, 0.0)(image)
    assert (out.int() - image.int()).abs().max() <= 1
