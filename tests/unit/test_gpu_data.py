"""Device-resident training data (glandseg.train.gpu_data), on CPU tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from glandseg import GlandsegError
from glandseg.models.targets import contour_target
from glandseg.train.gpu_data import (
    GpuAugment,
    TensorTrainData,
    blur_images,
    contour_classes,
    hed_jitter,
    normalised_distance,
)


def _blobs(h: int, w: int, n: int, seed: int) -> np.ndarray:
    """int32 label image with ``n`` touching/separate rectangles and discs."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    for i in range(1, n + 1):
        cy, cx, r = rng.integers(10, h - 10), rng.integers(10, w - 10), rng.integers(8, 22)
        if i % 2:
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
        else:
            lab[max(0, cy - r):cy + r, max(0, cx - r // 2):cx + r // 2] = i
    return lab


def _coded(lab: np.ndarray) -> torch.Tensor:
    """uint8 (3, H, W) image whose colour is a function of the label (flat per gland)."""
    return torch.from_numpy(np.stack([(lab * 37 + 20 + 60 * c) % 256 for c in range(3)])
                            .astype(np.uint8))


def _code(lab: torch.Tensor) -> torch.Tensor:
    return torch.stack([(lab * 37 + 20 + 60 * c) % 256 for c in range(3)], 1).float() / 255


def _data(aug: GpuAugment, seed: int = 0, sizes=((90, 120), (100, 80), (70, 70))):
    labs = [_blobs(h, w, 9, i) for i, (h, w) in enumerate(sizes)]
    return TensorTrainData([_coded(lb) for lb in labs],
                           [torch.from_numpy(lb) for lb in labs], aug, seed=seed), labs


def test_shapes_dtypes_and_targets():
    d, _ = _data(GpuAugment(crop=48, jpeg_p=0.5))
    b = d.batch(0, 5)
    assert b["image"].shape == (5, 3, 48, 48) and b["image"].dtype == torch.float32
    assert 0 <= float(b["image"].min()) and float(b["image"].max()) <= 1
    for k in ("labels", "target"):
        assert b[k].shape == (5, 48, 48) and b[k].dtype == torch.int64
    assert b["weight"].shape == b["distance"].shape == (5, 48, 48)
    assert set(torch.unique(b["target"]).tolist()) <= {0, 1, 2}
    assert torch.equal(b["target"], contour_classes(b["labels"], 2))
    assert float(b["distance"][b["labels"] == 0].abs().max()) == 0
    assert float(b["distance"].max()) <= 1 and float(b["weight"].min()) >= 0
    assert b["index"].shape == (5,)


def test_identity_crop_is_a_slice():
    d, labs = _data(GpuAugment.none(32))
    b = d.batch(3, 6)
    for k in range(6):
        lab = torch.from_numpy(labs[int(b["index"][k])]).long()
        img = _code(lab[None])[0]
        # find the crop's position: the (unique) slice that matches image and labels
        hits = [(y, x) for y in range(lab.shape[0] - 31) for x in range(lab.shape[1] - 31)
                if torch.equal(lab[y:y + 32, x:x + 32], b["labels"][k])
                and torch.allclose(img[:, y:y + 32, x:x + 32], b["image"][k], atol=1e-3)]
        assert hits, "crop is not a slice of its image"


def test_dihedral_poses_keep_image_and_labels_exactly_aligned():
    aug = GpuAugment.none(40)
    aug.dihedral = True
    d, _ = _data(aug)
    for step in range(4):
        b = d.batch(step, 8)
        assert torch.allclose(b["image"], _code(b["labels"]), atol=1e-3)  # grid rounding ~1e-5


@pytest.mark.parametrize("what", ["rotate", "scale", "elastic", "all"])
def test_geometric_transforms_keep_labels_integer_and_aligned(what):
    aug = GpuAugment.none(48)
    aug.dihedral = True
    if what in ("rotate", "all"):
        aug.rotate_p = 1.0
    if what in ("scale", "all"):
        aug.scale_p, aug.scale_range = 1.0, (0.8, 1.25)
    if what in ("elastic", "all"):
        aug.elastic_p = 1.0
    d, labs = _data(aug)
    ids = set().union(*(np.unique(lb).tolist() for lb in labs))
    n_checked = 0
    for step in range(3):
        b = d.batch(step, 6)
        lab = b["labels"]
        assert set(torch.unique(lab).tolist()) <= ids
        # where the labels are constant over 5x5, the image is the label's flat colour
        mx = torch.nn.functional.max_pool2d(lab[:, None].float(), 5, 1, 2)[:, 0]
        mn = -torch.nn.functional.max_pool2d(-lab[:, None].float(), 5, 1, 2)[:, 0]
        flat = (mx == mn) & (lab > 0)
        flat[:, :2] = flat[:, -2:] = flat[:, :, :2] = flat[:, :, -2:] = False  # 5x5 cut off
        diff = (b["image"] - _code(lab)).abs().amax(1)
        assert float(diff[flat].max()) < 2 / 255
        n_checked += int(flat.sum())
        assert torch.equal(b["target"], contour_classes(lab, 2))
    assert n_checked > 1000


def test_not_identity_when_augmenting():
    d, _ = _data(GpuAugment(crop=48))
    b = d.batch(0, 8)
    assert not torch.allclose(b["image"], _code(b["labels"]), atol=1e-3)  # colour changed


def test_deterministic_from_seed_and_step():
    a, _ = _data(GpuAugment(crop=40, jpeg_p=0.3), seed=5)
    b, _ = _data(GpuAugment(crop=40, jpeg_p=0.3), seed=5)
    x, y = a.batch(7, 6), b.batch(7, 6)
    for k in x:
        assert torch.equal(x[k], y[k]), k
    z = a.batch(8, 6)
    assert not torch.equal(x["image"], z["image"])
    c, _ = _data(GpuAugment(crop=40), seed=6)
    assert not torch.equal(c.batch(7, 6)["image"], a.batch(7, 6)["image"])


def test_indices_cover_every_image_each_epoch():
    d, _ = _data(GpuAugment.none(32), sizes=[(40, 40)] * 5)
    idx = torch.cat([d.indices(s, 2) for s in range(5)])  # 10 draws = 2 epochs of 5
    assert sorted(idx[:5].tolist()) == list(range(5)) and sorted(idx[5:].tolist()) == list(range(5))


@pytest.mark.parametrize("width", [1, 2, 3])
def test_contour_classes_matches_numpy_target(width):
    labs = np.stack([_blobs(60, 70, 12, s) for s in range(3)])
    got = contour_classes(torch.from_numpy(labs).long(), width).numpy()
    for g, lb in zip(got, labs, strict=True):
        np.testing.assert_array_equal(g, contour_target(lb, width))


def test_normalised_distance():
    lab = np.zeros((40, 60), np.int32)
    lab[5:25, 5:25] = 1
    lab[5:25, 25:45] = 2  # touching 1
    lab[30:40, 50:60] = 3  # at the image corner
    d = normalised_distance(lab)
    assert d.dtype == np.float32 and d.shape == lab.shape
    assert np.all(d[lab == 0] == 0)
    for i in (1, 2, 3):
        assert d[lab == i].max() == pytest.approx(1.0) and d[lab == i].min() > 0
    # the border between two touching glands is a border of both
    assert d[15, 24] < 0.2 and d[15, 25] < 0.2
    # the image edge is not: the deepest point of gland 3 lies on the image edge
    assert d[39, 59] == pytest.approx(1.0) or d[39, 55] > 0.5
    c = ndi.center_of_mass((d == d[lab == 1].max()) & (lab == 1))
    assert abs(c[0] - 14.5) < 1.5 and abs(c[1] - 14.5) < 1.5


def test_hed_jitter_and_blur_identity_and_effect():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 20, generator=g) * 0.9 + 0.05
    same = hed_jitter(x, torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.allclose(same, x, atol=1e-4)
    a = torch.tensor([[1.4, 0.6, 1.0], [1.0, 1.0, 1.0]])
    y = hed_jitter(x, a, torch.zeros(2, 3))
    assert not torch.allclose(y[0], x[0], atol=1e-2) and torch.allclose(y[1], x[1], atol=1e-4)
    z = blur_images(x, torch.tensor([0.0, 2.0]))
    assert torch.allclose(z[0], x[0], atol=1e-5)
    assert float(z[1].std()) < float(x[1].std()) * 0.7


def test_stain_range_reaches_its_bounds():
    aug = GpuAugment.none(32)
    aug.stain_p, aug.stain_range = 1.0, (0.6, 1.4)
    d, _ = _data(aug)
    p = d._color_params(torch.Generator().manual_seed(1), 4000)
    alpha = p["stain"][1][:, :2]
    assert 0.6 <= float(alpha.min()) < 0.62 and 1.38 < float(alpha.max()) <= 1.4


def test_bad_input_is_an_error():
    img, lab = torch.zeros(3, 20, 20, dtype=torch.uint8), torch.zeros(20, 21, dtype=torch.int32)
    with pytest.raises(GlandsegError, match="labels"):
        TensorTrainData([img], [lab], GpuAugment(crop=16))
    with pytest.raises(GlandsegError, match="uint8"):
        TensorTrainData([img.float()], [lab[:, :20]], GpuAugment(crop=16))
    with pytest.raises(GlandsegError, match="one label image per image"):
        TensorTrainData([img], [], GpuAugment(crop=16))
    with pytest.raises(GlandsegError, match="blur_p"):
        GpuAugment(blur_p=1.5)
