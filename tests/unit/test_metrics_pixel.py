"""Pixel Dice, BCE and the count score on small arrays with values derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glandseg.metrics.pixel import BCE_EPS, bce, count_objects, count_score, pixel_dice


def test_pixel_dice_ignores_ids():
    # pred foreground 4 px (two objects), gt foreground 5 px, overlap 3 -> 2*3/9 = 2/3
    pred = np.array([[1, 1, 0, 0], [0, 7, 7, 0]])
    gt = np.array([[2, 2, 2, 0], [0, 3, 0, 3]])
    assert pixel_dice(pred, gt) == pytest.approx(2 / 3)
    assert pixel_dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert pixel_dice(np.ones((2, 2)), np.zeros((2, 2))) == 0.0
    with pytest.raises(ValueError):
        pixel_dice(np.zeros((2, 2)), np.zeros((3, 2)))


def test_bce_values():
    gt = np.array([[0, 1], [1, 0]])
    # p = 0.5 everywhere: -log(0.5) per pixel
    assert bce(np.full((2, 2), 0.5), gt) == pytest.approx(math.log(2))
    # perfect probabilities, clipped: -log(1 - eps) per pixel
    assert bce(gt.astype(float), gt) == pytest.approx(-math.log1p(-BCE_EPS))
    # one confident mistake among 4 pixels costs -log(eps)/4 (plus 3 near-zero terms)
    p = gt.astype(float)
    p[0, 0] = 1.0
    want = (-math.log(BCE_EPS) - 3 * math.log1p(-BCE_EPS)) / 4
    assert bce(p, gt) == pytest.approx(want)
    # p = 0.8 on foreground, 0.2 on background: -log(0.8)
    assert bce(np.where(gt > 0, 0.8, 0.2), gt) == pytest.approx(-math.log(0.8))


@pytest.mark.parametrize("bad", [np.array([[1.5, 0.0]]), np.array([[np.nan, 0.0]]), np.array([[-0.1, 0.0]])])
def test_bce_rejects_non_probabilities(bad):
    with pytest.raises(ValueError):
        bce(bad, np.zeros((1, 2), int))


def test_count_score():
    assert count_score(0, 0) == 1.0
    assert count_score(0, 3) == 0.0
    assert count_score(3, 0) == 0.0
    assert count_score(4, 8) == 0.5
    assert count_score(8, 4) == 0.5
    assert count_score(5, 5) == 1.0
    with pytest.raises(ValueError):
        count_score(-1, 2)


def test_count_objects_uses_ids_as_given():
    lab = np.array([[0, 5, 5, 0, 5], [9, 0, 0, 0, 70000]])  # id 5 in two pieces is one object
    assert count_objects(lab) == 3
    assert count_objects(np.zeros((2, 2), int)) == 0
    assert count_objects(np.array([[True, False]])) == 1
