"""Label image → model targets: contour classes, boundary band, Ronneberger weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glandseg.models.targets import TargetMaker, boundary_band, contour_target, unet_weight_map


def two_touching_squares() -> np.ndarray:
    """Glands 1 (cols 10..19) and 2 (cols 20..29), rows 10..29, sharing the edge at 19|20."""
    lab = np.zeros((40, 40), np.int32)
    lab[10:30, 10:20] = 1
    lab[10:30, 20:30] = 2
    return lab


def test_contour_target_touching_squares() -> None:
    lab = two_touching_squares()
    t = contour_target(lab, width=2)
    assert t.dtype == np.int64 and t.shape == lab.shape
    assert (t[lab == 0] == 0).all()
    # between the two glands: both sides of the shared edge are boundary (2 px each)
    assert (t[14:26, 18:22] == 2).all()
    # just beyond the band, interior again on each side
    assert (t[14:26, 17] == 1).all() and (t[14:26, 22] == 1).all()
    # centres are interior
    assert t[20, 14] == 1 and t[20, 25] == 1
    # the interiors of the two glands are not connected through class 1
    from scipy import ndimage as ndi

    _, n = ndi.label(t == 1)
    assert n == 2


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_boundary_band_width(width: int) -> None:
    lab = np.zeros((50, 50), np.int32)
    y0, y1, x0, x1 = 10, 40, 8, 42
    lab[y0:y1, x0:x1] = 7
    band = boundary_band(lab, width)
    expected = lab > 0
    expected[y0 + width:y1 - width, x0 + width:x1 - width] = False
    np.testing.assert_array_equal(band, expected)


def test_boundary_band_only_inside_glands() -> None:
    lab = two_touching_squares()
    band = boundary_band(lab, 3)
    assert not band[lab == 0].any()
    assert band[20, 19] and band[20, 20]  # both sides of a gland-gland border


def test_weight_map_peaks_in_gap_between_close_objects() -> None:
    lab = np.zeros((64, 64), np.int32)
    lab[16:48, 8:30] = 1
    lab[16:48, 32:54] = 2  # 2-px gap at columns 30, 31
    w = unet_weight_map(lab, w0=10.0, sigma=5.0)
    assert w.dtype == np.float32 and w.shape == lab.shape
    iy, ix = np.unravel_index(np.argmax(w), w.shape)
    assert 16 <= iy < 48 and ix in (30, 31)
    # the gap weight is close to w_c(bg) + w0 * exp(-(1+2)^2/(2σ^2)) (d1 = 1, d2 = 2)
    fg = lab > 0
    n_fg, n = fg.sum(), lab.size
    wc_fg, wc_bg = 0.5 * n / n_fg, 0.5 * n / (n - n_fg)
    norm = (wc_fg * n_fg + wc_bg * (n - n_fg)) / n
    expected_gap = wc_bg / norm + 10.0 * np.exp(-(1 + 2) ** 2 / (2 * 5.0**2))
    assert w[30, 30] == pytest.approx(expected_gap, rel=1e-4)


def test_weight_map_class_balanced_elsewhere() -> None:
    lab = np.zeros((80, 80), np.int32)
    lab[10:20, 10:20] = 1
    lab[10:20, 60:70] = 2  # far apart: the border term vanishes except near the glands
    w = unet_weight_map(lab, w0=10.0, sigma=2.0)
    fg = lab > 0
    n_fg, n_bg = fg.sum(), (~fg).sum()
    # inside glands: one value (border term only on background)
    assert np.ptp(w[fg]) == 0
    far_bg = w[60:, :]  # rows far from both glands
    assert np.ptp(far_bg) < 1e-6
    # class balance: w_fg / w_bg = n_bg / n_fg, i.e. equal total weight per class
    assert w[fg][0] / far_bg[0, 0] == pytest.approx(n_bg / n_fg, rel=1e-5)
    # normalised so the class-balance term has mean 1
    base = np.where(fg, w[fg][0], far_bg[0, 0])
    assert base.mean() == pytest.approx(1.0, rel=1e-5)


def test_weight_map_single_or_no_object() -> None:
    lab = np.zeros((20, 20), np.int32)
    np.testing.assert_array_equal(unet_weight_map(lab), np.ones((20, 20), np.float32))
    lab[5:10, 5:10] = 3
    w = unet_weight_map(lab)
    assert len(np.unique(w)) == 2  # just the two class weights, no border term


def test_target_maker_binary() -> None:
    lab = torch.from_numpy(two_touching_squares().astype(np.int64))
    out = TargetMaker("binary", weight_map=True)(lab)
    assert set(out) == {"target", "weight"}
    assert out["target"].dtype == torch.float32 and out["target"].shape == (1, 40, 40)
    assert torch.equal(out["target"][0], (lab > 0).float())
    assert out["weight"].dtype == torch.float32 and out["weight"].shape == (40, 40)


def test_target_maker_contour() -> None:
    lab = torch.from_numpy(two_touching_squares().astype(np.int64))
    out = TargetMaker("contour", boundary_width=3, weight_map=False)(lab)
    assert set(out) == {"target"}
    t = out["target"]
    assert t.dtype == torch.int64 and t.shape == (40, 40)
    assert set(t.unique().tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(t.numpy(), contour_target(lab.numpy(), 3))


def test_target_maker_unknown_task() -> None:
    with pytest.raises(ValueError):
        TargetMaker("instances")
