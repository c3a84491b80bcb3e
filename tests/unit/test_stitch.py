"""Instance inference: tiling, stitching across tile seams, label painting, tuning.

The "model" here is a stub that returns the ground-truth instances cut to each tile, in
torchvision's eval format, so any duplicate or split gland comes from the stitching.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import masks_to_boxes

from glandseg.infer.instances import groups_to_labels, tune_instances
from glandseg.infer.predictor import Predictor, TileConfig
from glandseg.infer.stitch import Detection, stitch, tile_windows

log = logging.getLogger(__name__)


def _encode_positions(h: int, w: int) -> np.ndarray:
    """An image whose pixels spell their own coordinates (R, G = x, y mod 256; B = high bits)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x % 256, y % 256, (x // 256) * 16 + y // 256], -1).astype(np.uint8)


def _instances_out(lab: torch.Tensor, score_of=lambda i: 0.5 + i / 1000) -> dict:
    ids = torch.unique(lab)
    ids = ids[ids > 0]
    masks = (lab[None] == ids[:, None, None]).float()
    boxes = masks_to_boxes(masks) if len(ids) else torch.zeros(0, 4)
    return {"boxes": boxes, "labels": torch.ones(len(ids), dtype=torch.int64),
            "scores": torch.tensor([score_of(int(i)) for i in ids], dtype=torch.float32),
            "masks": masks[:, None]}


class TileStub(nn.Module):
    """Returns the truth instances inside each tile; finds the tile from the pixel code."""

    def __init__(self, truth: np.ndarray) -> None:
        super().__init__()
        self.truth = torch.from_numpy(truth.astype(np.int64))
        self.tiles: list[tuple[int, int, int, int]] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        outs = []
        for img in images:
            r, g, b = (img[:, 0, 0] * 255).round().long().tolist()
            x0, y0 = r + 256 * (b // 16), g + 256 * (b % 16)
            th, tw = img.shape[-2:]
            self.tiles.append((y0, x0, y0 + th, x0 + tw))
            outs.append(_instances_out(self.truth[y0:y0 + th, x0:x0 + tw]))
        return outs


class ScaledStub(nn.Module):
    """One-tile stub for a scaled image: each truth instance area-resampled to the model
    input's size, as soft mask probabilities."""

    def __init__(self, truth: np.ndarray) -> None:
        super().__init__()
        self.truth = torch.from_numpy(truth.astype(np.int64))

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        outs = []
        for img in images:
            out = _instances_out(self.truth)
            soft = F.interpolate(out["masks"], size=img.shape[-2:], mode="area")
            out["masks"] = soft
            out["boxes"] = masks_to_boxes((soft[:, 0] > 0).float())
            outs.append(out)
        return outs


def _cfg(scale: float = 1.0) -> dict:
    return {"model": "stub", "task": "instances",
            "preprocess": {"scale": scale, "mean": [0, 0, 0], "std": [1, 1, 1]},
            "postprocess": {"score_threshold": 0.5, "mask_threshold": 0.5, "min_area": 10}}


def _seam_truth(h: int = 300, w: int = 340) -> np.ndarray:
    """Glands on the seams of 128-px tiles with 32 px overlap (windows start at 0, 96, 192…):
    small ones inside the overlap band, large ones crossing it, one on a 4-tile corner,
    two touching glands across a seam, one cut by the image border."""
    t = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]

    def ellipse(k: int, cy: float, cx: float, ry: float, rx: float) -> None:
        t[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k

    ellipse(1, 40, 112, 12, 10)  # wholly inside the first vertical overlap band
    ellipse(2, 60, 200, 30, 70)  # larger than the overlap, across two seams
    ellipse(3, 112, 112, 25, 25)  # the corner where four windows meet
    t[150:200, 60:110] = 4  # two touching glands, seam between them at x = 110
    t[150:200, 110:150] = 5
    ellipse(6, 250, 224, 40, 20)  # a vertical gland on the x-seams
    ellipse(7, 5, 300, 15, 25)  # cut by the top image border
    ellipse(8, 240, 40, 20, 20)  # inside one window only
    return t


def _ious(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    out = []
    for k in np.unique(truth)[1:]:
        g = truth == k
        ids, counts = np.unique(pred[g], return_counts=True)
        best = ids[np.argmax(counts)]
        p = pred == best
        out.append(float((p & g).sum() / (p | g).sum()) if best else 0.0)
    return out


def test_tile_windows_cover_and_overlap():
    wins = tile_windows(300, 340, 128, 32)
    cover = np.zeros((300, 340), int)
    for y0, x0, y1, x1 in wins:
        assert y1 - y0 == 128 and x1 - x0 == 128
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert tile_windows(100, 90, 128, 32) == [(0, 0, 100, 90)]


def test_stitching_gives_one_object_per_gland():
    truth = _seam_truth()
    stub = TileStub(truth)
    pred = Predictor(stub, _cfg(), "cpu", tiling=TileConfig(tile=128, overlap=32, batch_size=3))
    labels = pred.predict(_encode_positions(*truth.shape))
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert len(stub.tiles) == len(tile_windows(*truth.shape, 128, 32)) > 4
    assert len(np.unique(labels)) - 1 == len(np.unique(truth)) - 1
    ious = _ious(labels, truth)
    assert min(ious) > 0.9, ious


def test_scaled_single_tile_back_to_input_size():
    truth = _seam_truth(200, 180)
    pred = Predictor(ScaledStub(truth), _cfg(scale=0.5), "cpu")
    labels = pred.predict(np.zeros((*truth.shape, 3), np.uint8))
    assert labels.shape == truth.shape
    assert len(np.unique(labels)) == len(np.unique(truth))
    assert min(_ious(labels, truth)) > 0.9


def _det(score: float, y0: int, x0: int, h: int, w: int, tile: int = 0,
         truncated: bool = False, p: float = 0.9) -> Detection:
    return Detection(score, y0, x0, np.full((h, w), p, np.float32), tile, truncated)


def test_labels_resolve_overlaps_by_score_and_thresholds():
    a = _det(0.9, 10, 10, 30, 30)
    b = _det(0.7, 20, 20, 30, 30)  # overlaps a: a wins the overlap
    c = _det(0.4, 60, 60, 20, 20)  # below the score threshold
    d = _det(0.8, 60, 0, 20, 20, p=0.45)  # below the mask threshold
    lab = groups_to_labels([[b], [a], [c], [d]], (100, 100), score_threshold=0.5,
                           mask_threshold=0.5, min_area=10)
    assert lab.dtype == np.int32 and set(np.unique(lab)) == {0, 1, 2}
    ka, kb = lab[15, 15], lab[45, 45]
    assert ka != kb and (lab[20:40, 20:40] == ka).all()
    assert (lab == kb).sum() == 30 * 30 - 20 * 20
    lab2 = groups_to_labels([[b], [a]], (100, 100), min_area=600)  # b keeps 500 px
    assert set(np.unique(lab2)) == {0, 1}
    # complete instances win over truncated-only ones, whatever their score
    t = _det(0.99, 20, 20, 30, 30, truncated=True)
    lab3 = groups_to_labels([[t], [a]], (100, 100), min_area=0)
    assert lab3[25, 25] == lab3[15, 15]


def test_stitch_keeps_touching_glands_apart_and_one_per_tile():
    wins = [(0, 0, 64, 64), (0, 40, 64, 104)]
    left_piece = _det(0.9, 10, 30, 20, 34, tile=0, truncated=True)  # cut at x = 64
    whole = _det(0.8, 10, 30, 20, 40, tile=1)
    neighbour = _det(0.8, 30, 30, 20, 40, tile=1)  # touches `whole` below
    twin = _det(0.7, 10, 30, 20, 40, tile=1)  # a same-tile duplicate is never merged
    groups = stitch([left_piece, whole, neighbour, twin], wins)
    sizes = sorted(len(g) for g in groups)
    assert sizes == [1, 1, 2]
    merged = next(g for g in groups if len(g) == 2)
    assert {d.tile for d in merged} == {0, 1}


def test_tune_instances_with_perfect_stub():
    pytest.importorskip("glandseg.metrics.score")
    truth = _seam_truth(200, 200)
    pred = Predictor(TileStub(truth), _cfg(), "cpu", tiling=TileConfig(128, 32, 2))
    grid = {"score_threshold": [0.5, 0.6], "mask_threshold": [0.5], "min_area": [10]}
    params, dice = tune_instances(pred, [("train_1", _encode_positions(200, 200), truth)], grid)
    assert params["score_threshold"] == 0.5 and dice > 0.95
