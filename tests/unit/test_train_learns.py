"""Training learns: a small U-Net trained by the engine (``glandseg.train.train``, with its
augmentation, loss, optimizer and schedule) on ONE synthetic image of five glands goes from
finding no gland to official object Dice > 0.9 on that image, scored with glandseg.metrics
from the saved run folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glandseg.infer.predictor import Predictor
from glandseg.metrics.score import score_pairs
from glandseg.train.checkpoint import load_model
from glandseg.train.loop import TrainConfig
from glandseg.train.run import train
from tests.conftest import write_grade_csv

#: (centre y, centre x, radius y, radius x) of the five glands of :func:`gland_image`.
GLANDS = [(24, 26, 16, 12), (26, 70, 12, 18), (70, 30, 14, 20), (68, 84, 18, 14),
          (30, 110, 12, 10)]


def gland_image(h: int = 96, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 (H, W, 3), labels int32 (H, W))``: five elliptic glands (a dark
    purple epithelium ring around a pale lumen almost the colour of the pink stroma, so the
    lumen must be learnt from context) on noisy stroma; labels 0 = background, 1..5."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = (235, 180, 210)
    lab = np.zeros((h, w), np.int32)
    for i, (cy, cx, ry, rx) in enumerate(GLANDS, 1):
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        lab[r <= 1] = i
        img[r <= 1] = (110, 50, 130)
        img[r <= 0.35] = (245, 225, 240)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lab


@pytest.fixture
def one_image(tmp_path: Path) -> Path:
    """The same image as train_1 and train_4 (patients 1 and 2, both malignant), so the
    patient split trains on one copy and validates on the other: the same image."""
    img, lab = gland_image()
    for name in ("train_1", "train_4"):
        Image.fromarray(img).save(tmp_path / f"{name}.png")
        Image.fromarray(lab.astype(np.uint8)).save(tmp_path / f"{name}_anno.png")
    write_grade_csv(tmp_path / "Grade.csv", ["train_1", "train_4"])
    return tmp_path


def test_small_unet_overfits_one_image(one_image: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: faster on a busy 2-core machine
    try:
        run = train(TrainConfig(
            model="unet", data=str(one_image), out=str(tmp_path / "run"), epochs=12,
            model_args={"width": 8, "out_channels": 1}, crop=64, scale=1.0, workers=0,
            batch_size=4, repeats=16, lr=3e-3, val_every=4, tune_postprocess=False,
            device="cpu", seed=0))
    finally:
        torch.set_num_threads(n)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    loss = [float(r["train_loss"]) for r in rows]
    # the (boundary-weighted, augmented, hence noisy) training loss falls
    assert np.mean(loss[-3:]) < 0.85 * np.mean(loss[:3]), loss
    # Scored independently of the training loop: the saved model, predicted afresh,
    # official object Dice against the truth.
    model, cfg = load_model(str(run))
    img, truth = gland_image()
    labels = Predictor(model, cfg, "cpu").predict(img)
    pooled = next(iter(score_pairs([("train_1", labels, truth)]).values()))["pooled"]
    assert pooled["object_dice"] > 0.9, pooled
    assert pooled["tp"] == 5 and pooled["fp"] == 0, pooled  # five glands, nothing else
    # ... while the same network untrained finds (almost) nothing
    torch.manual_seed(0)
    fresh = type(model)(width=8, out_channels=1).eval()
    labels0 = Predictor(fresh, cfg, "cpu").predict(img)
    pooled0 = next(iter(score_pairs([("train_1", labels0, truth)]).values()))["pooled"]
    assert pooled0["object_dice"] < 0.5, pooled0

