"""Distance-seeded watershed (glandseg.infer.distance)."""

from __future__ import annotations

import numpy as np
import pytest

from glandseg.infer.distance import DISTANCE_DEFAULTS, distance_to_labels
from glandseg.infer.postprocess import contour_to_labels
from glandseg.train.gpu_data import normalised_distance


def _touching() -> np.ndarray:
    yy, xx = np.mgrid[:80, :120]
    lab = np.zeros((80, 120), np.int32)
    lab[(yy - 40) ** 2 + (xx - 35) ** 2 < 25**2] = 1
    lab[(yy - 40) ** 2 + (xx - 80) ** 2 < 22**2] = 2  # overlaps disc 1: they touch
    lab[5:15, 100:118] = 3  # a small separate gland
    return lab


def _probs(lab: np.ndarray) -> np.ndarray:
    """Interior everywhere in the glands, no boundary between them (a merge for contour)."""
    fg = (lab > 0).astype(np.float32)
    return np.stack([1 - fg, fg, np.zeros_like(fg)])


def test_distance_seeds_split_touching_glands_that_contour_seeds_merge():
    lab = _touching()
    probs = _probs(lab)
    merged = contour_to_labels(probs, min_area=20)
    assert merged.max() == 2  # the two discs are one object
    got = distance_to_labels(probs, normalised_distance(lab), min_area=20)
    assert got.dtype == np.int32 and got.shape == lab.shape and got.max() == 3
    for i in (1, 2, 3):
        ids, n = np.unique(got[lab == i], return_counts=True)
        j = ids[np.argmax(n)]
        dice = 2 * np.sum((got == j) & (lab == i)) / (np.sum(got == j) + np.sum(lab == i))
        assert j > 0 and dice > 0.95


def test_min_area_unseeded_components_and_background():
    lab = _touching()
    probs = _probs(lab)
    dist = normalised_distance(lab)
    dist[lab == 3] = 0  # no seed: still an object of its own
    got = distance_to_labels(probs, dist, min_area=20)
    assert got.max() == 3 and np.all(got[lab == 0] == 0)
    assert distance_to_labels(probs, dist, min_area=200).max() == 2  # the small one dropped
    empty = distance_to_labels(_probs(np.zeros_like(lab)), np.zeros(lab.shape, np.float32))
    assert empty.max() == 0


def test_shapes_are_checked_and_defaults_are_the_signature():
    with pytest.raises(ValueError, match="expected probs"):
        distance_to_labels(np.zeros((3, 4, 4)), np.zeros((4, 5)))
    import inspect

    sig = inspect.signature(distance_to_labels).parameters
    assert {k: sig[k].default for k in DISTANCE_DEFAULTS} == DISTANCE_DEFAULTS
