"""Probability maps → instance labels (hand-built probabilities, known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from glandseg.infer.postprocess import (
    binary_to_labels,
    contour_to_labels,
    probs_to_labels,
    relabel_sequential,
)


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def contour_probs(objects: list[np.ndarray], ring: int = 3) -> np.ndarray:
    """(3, H, W) probabilities: interior 0.9 inside each object minus a ``ring``-px border,
    boundary 0.9 on that border, background 0.9 elsewhere (rest spread evenly)."""
    from scipy import ndimage as ndi

    shape = objects[0].shape
    cls = np.zeros(shape, np.int64)
    for m in objects:
        inner = ndi.binary_erosion(m, iterations=ring)
        cls[m] = 2
        cls[inner] = 1
    p = np.full((3, *shape), 0.05, np.float32)
    for c in range(3):
        p[c][cls == c] = 0.9
    return p


def test_contour_separates_touching_discs() -> None:
    shape = (64, 96)
    a, b = disc(shape, 32, 30, 16), disc(shape, 32, 60, 16)  # overlap: the discs touch
    assert (a & b).any()
    lab = contour_to_labels(contour_probs([a, b]), min_area=50, min_seed_area=10)
    assert lab.dtype == np.int32
    assert lab.max() == 2
    assert lab[32, 30] != lab[32, 60] and lab[32, 30] > 0 and lab[32, 60] > 0
    # each object covers (most of) its disc, and the union is the union of the discs
    for m, centre in ((a & ~b, (32, 30)), (b & ~a, (32, 60))):
        ident = lab[centre]
        assert (lab[m] == ident).mean() > 0.95
    np.testing.assert_array_equal(lab > 0, a | b)


def test_contour_removes_small_objects() -> None:
    shape = (64, 64)
    big, small = disc(shape, 30, 30, 14), disc(shape, 55, 55, 4)  # ~615 px and ~49 px
    probs = contour_probs([big, small], ring=1)
    lab = contour_to_labels(probs, min_area=100, min_seed_area=5)
    assert lab.max() == 1
    assert lab[30, 30] == 1 and lab[55, 55] == 0
    kept = contour_to_labels(probs, min_area=10, min_seed_area=5)
    assert kept.max() == 2 and kept[55, 55] > 0


def test_contour_fills_holes() -> None:
    shape = (64, 64)
    d = disc(shape, 32, 32, 20)
    hole = disc(shape, 32, 32, 4)
    probs = contour_probs([d])
    probs[:, hole] = np.array([0.9, 0.05, 0.05], np.float32)[:, None]  # background inside
    filled = contour_to_labels(probs, min_area=50, min_seed_area=10, fill_holes=True)
    assert filled.max() == 1 and (filled[hole] == 1).all()
    np.testing.assert_array_equal(filled > 0, d)
    open_ = contour_to_labels(probs, min_area=50, min_seed_area=10, fill_holes=False)
    assert open_.max() == 1 and (open_[hole] == 0).all()


def test_contour_unseeded_foreground_becomes_an_object() -> None:
    shape = (48, 48)
    d = disc(shape, 24, 24, 12)
    p = np.full((3, *shape), 0.05, np.float32)
    p[0][~d] = 0.9
    p[2][d] = 0.9  # only boundary class: no interior seed
    lab = contour_to_labels(p, min_area=50)
    assert lab.max() == 1 and (lab[d] == 1).all()


def neck_shape() -> np.ndarray:
    shape = (60, 100)
    m = disc(shape, 30, 28, 16) | disc(shape, 30, 72, 16)
    m[28:33, 28:72] = True  # a 5-px neck joins them
    return m


def test_binary_split_h_splits_a_neck() -> None:
    m = neck_shape()
    prob = np.where(m, 0.9, 0.1).astype(np.float32)
    lab = binary_to_labels(prob[None], foreground_threshold=0.5, min_area=50, split_h=2.0)
    assert lab.max() == 2
    assert lab[30, 28] > 0 and lab[30, 72] > 0 and lab[30, 28] != lab[30, 72]
    np.testing.assert_array_equal(lab > 0, m)


def test_binary_without_split_keeps_one() -> None:
    m = neck_shape()
    prob = np.where(m, 0.9, 0.1).astype(np.float32)
    lab = binary_to_labels(prob, foreground_threshold=0.5, min_area=50, split_h=0.0)
    assert lab.max() == 1
    np.testing.assert_array_equal(lab > 0, m)


def test_binary_threshold_min_area_and_holes() -> None:
    shape = (64, 64)
    big, small = disc(shape, 30, 30, 15), disc(shape, 58, 58, 3)
    prob = np.full(shape, 0.2, np.float32)
    prob[big | small] = 0.7
    prob[disc(shape, 30, 30, 3)] = 0.1  # a hole
    lab = binary_to_labels(prob, foreground_threshold=0.5, min_area=100)
    assert lab.max() == 1 and lab[30, 30] == 1 and lab[58, 58] == 0
    # a higher threshold than every probability leaves nothing
    assert binary_to_labels(prob, foreground_threshold=0.8).max() == 0


def test_relabel_sequential_keeps_order() -> None:
    lab = np.array([[0, 5, 5], [9, 0, 2], [2, 9, 0]], np.int32)
    out = relabel_sequential(lab)
    np.testing.assert_array_equal(out, [[0, 2, 2], [3, 0, 1], [1, 3, 0]])
    assert out.dtype == np.int32
    assert relabel_sequential(np.zeros((3, 3), np.int32)).max() == 0


def test_probs_to_labels_dispatch() -> None:
    p = contour_probs([disc((40, 40), 20, 20, 12)])
    np.testing.assert_array_equal(probs_to_labels(p, "contour", {"min_area": 10}),
                                  contour_to_labels(p, min_area=10))
    with pytest.raises(ValueError):
        probs_to_labels(p, "instances", {})


# --- parameters are checked: an unknown key is an error, never silently ignored ----------

@pytest.mark.parametrize("task,params,key", [
    ("contour", {"min_areaa": 10}, "postprocess.min_areaa"),
    ("binary", {"interior_threshold": 0.5}, "postprocess.interior_threshold"),
    ("contour", {"foreground_threshold": 1.5}, "postprocess.foreground_threshold"),
    ("binary", {"min_area": -3}, "postprocess.min_area"),
])
def test_probs_to_labels_checks_its_parameters(task: str, params: dict, key: str) -> None:
    from glandseg import GlandsegError

    p = contour_probs([disc((40, 40), 20, 20, 12)])
    probs = p if task == "contour" else p[1:2]
    with pytest.raises(GlandsegError, match=key):
        probs_to_labels(probs, task, params)


def test_functions_take_no_stray_keywords() -> None:
    p = contour_probs([disc((40, 40), 20, 20, 12)])
    with pytest.raises(TypeError):
        contour_to_labels(p, min_size=10)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        binary_to_labels(p[1], seed_area=10)  # type: ignore[call-arg]


def test_tuning_grids_name_real_parameters() -> None:
    from glandseg.infer.instances import DEFAULTS, GRID
    from glandseg.models.config import POSTPROCESS, InstancePost
    from glandseg.train.tune import GRIDS

    for task, grid in GRIDS.items():
        assert set(grid) <= set(POSTPROCESS[task].names()), task
        POSTPROCESS[task].from_dict({k: v[0] for k, v in grid.items()})  # values in range
    assert set(GRID) == set(InstancePost.names()) and DEFAULTS == InstancePost().as_dict()


def test_tuning_refuses_an_unknown_grid_key() -> None:
    from glandseg import GlandsegError
    from glandseg.train.tune import tune_postprocess

    class Fake:
        task = "binary"

        def predict_proba(self, image):  # pragma: no cover - refused before predicting
            raise AssertionError("predicted before checking the grid")

    with pytest.raises(GlandsegError, match="unknown key 'interior_threshold'"):
        tune_postprocess(Fake(), [("train_1", None, None)], {"interior_threshold": [0.5]})


def test_instance_parameters_are_checked() -> None:
    import torch

    from glandseg import GlandsegError
    from glandseg.infer.instances import predict_instances, tune_instances
    from glandseg.infer.predictor import Predictor

    class NeverCalled(torch.nn.Module):
        def forward(self, x):  # pragma: no cover - refused before the model runs
            raise AssertionError("the model ran")

    cfg = {"task": "instances",
           "preprocess": {"scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]}}
    pred = Predictor(NeverCalled(), cfg)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(GlandsegError, match="postprocess.scor_threshold"):
        predict_instances(pred, image, {"scor_threshold": 0.5})
    with pytest.raises(GlandsegError, match="unknown key 'min_size'"):
        tune_instances(pred, [("train_1", image, np.zeros((32, 32), np.int32))],
                       {"min_size": [10]})
    with pytest.raises(GlandsegError, match="postprocess.fill_holes"):
        Predictor(NeverCalled(), {**cfg, "postprocess": {"fill_holes": True}})


def test_boundary_weight_keeps_glands_apart_across_a_faint_gap() -> None:
    """Two touching discs whose gap the model sees only faintly (interior 0.55 there, above
    the seed threshold, with boundary 0.4: what a blurred scan gives): the interior alone
    seeds one object; ``interior - 1 x boundary`` seeds two."""
    shape = (64, 96)
    a, b = disc(shape, 32, 30, 16), disc(shape, 32, 60, 16)
    p = contour_probs([a | b])
    neck = np.zeros(shape, bool)
    neck[:, 44:47] = True
    neck &= a | b
    p[1][neck], p[2][neck], p[0][neck] = 0.55, 0.4, 0.05
    kw = dict(interior_threshold=0.5, min_area=50, min_seed_area=10)
    assert contour_to_labels(p, **kw).max() == 1
    lab = contour_to_labels(p, boundary_weight=1.0, **kw)
    assert lab.max() == 2 and lab[32, 30] != lab[32, 60]
    np.testing.assert_array_equal(lab > 0, contour_to_labels(p, **kw) > 0)  # same foreground
    # through the config: checked, and 0 (the default) is the plain interior
    assert probs_to_labels(p, "contour", {**kw, "boundary_weight": 1.0}).max() == 2
    assert probs_to_labels(p, "contour", kw).max() == 1
    from glandseg import GlandsegError

    with pytest.raises(GlandsegError, match="boundary_weight"):
        probs_to_labels(p, "contour", {"boundary_weight": -1.0})


# (shape, relief blur, seed quantile, mask level, rng seed): small seeds in a fine relief;
# seeds covering most of each component (their inner pixels left out of the flooding) in a
# smooth relief
WATERSHED_CASES = [((160, 190), 2, 0.08, 0.5, s) for s in (0, 1, 2)] + [
    ((150, 170), 3, 0.45, 0.48, s) for s in (0, 1)]


@pytest.mark.parametrize(("shape", "blur", "seeds", "level", "seed"), WATERSHED_CASES)
def test_watershed_by_component_equals_the_whole_image_watershed(shape, blur, seeds, level,
                                                                 seed: int) -> None:
    """Per-component flooding gives exactly skimage's whole-image watershed (random relief
    without exact ties, many components, markers outside the mask, small or large seeds)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from glandseg.infer.postprocess import watershed_by_component

    rng = np.random.default_rng(seed)
    relief = ndi.gaussian_filter(rng.random(shape), blur)
    mask = ndi.gaussian_filter(rng.random(shape), 3) > level
    markers, _ = ndi.label(relief < np.quantile(relief, seeds))
    ref = watershed(relief, markers=markers, mask=mask)
    assert np.array_equal(watershed_by_component(relief, markers, mask), ref)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fill_mask_holes_equals_scipy(seed: int) -> None:
    """One labelling of the background fills exactly scipy's holes (4-connected, the
    border counts as outside), and fill_holes_per_object gives each hole the most common
    label around it as before (scipy's holes, labelled one by one)."""
    from scipy import ndimage as ndi

    from glandseg.infer.postprocess import fill_holes_per_object, fill_mask_holes

    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = ndi.gaussian_filter(rng.random((h, w)), 1) > rng.uniform(0.3, 0.6)
        assert np.array_equal(fill_mask_holes(m), ndi.binary_fill_holes(m))
        lab = ndi.label(rng.random((h, w)) < 0.6)[0].astype(np.int32)
        lab[rng.random((h, w)) < 0.3] = 0
        want = lab.copy()
        holes, _ = ndi.label(ndi.binary_fill_holes(lab > 0) & (lab == 0))
        grown = ndi.grey_dilation(lab, size=3)
        for k in range(1, holes.max() + 1):
            vals = grown[holes == k]
            vals = vals[vals > 0]
            if vals.size:
                want[holes == k] = np.bincount(vals).argmax()
        assert np.array_equal(fill_holes_per_object(lab.copy()), want)
    assert fill_mask_holes(np.zeros((0, 3), bool)).shape == (0, 3)


def test_relabel_sequential_with_gaps_and_already_sequential() -> None:
    lab = np.array([[0, 7, 7], [3, 0, 9]], np.int64)
    out = relabel_sequential(lab)
    assert out.dtype == np.int32 and out.tolist() == [[0, 2, 2], [1, 0, 3]]
    seq = np.array([[0, 1], [2, 2]], np.int32)
    again = relabel_sequential(seq)
    assert again.tolist() == seq.tolist() and again is not seq
