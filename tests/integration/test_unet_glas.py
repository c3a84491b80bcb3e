"""A tiny trained U-Net evaluated on real GlaS Test A/B images (``limit=1``); skipped
without the data. The numbers mean nothing; the shape of the outputs is the contract."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from glandseg.data.io import read_image, read_label
from glandseg.infer.predictor import Predictor
from glandseg.report.evaluate import evaluate_model
from glandseg.train.loop import TrainConfig, train
from tests.conftest import make_glas_folder

pytestmark = pytest.mark.glas

POOLED = {"f1", "object_dice", "object_hausdorff", "tp", "fp", "fn"}
PER_IMAGE = {"f1", "object_dice", "object_hausdorff", "bce", "count_score", "pixel_dice"}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unet_glas")
    data = make_glas_folder(root / "synth", names=[f"train_{i}" for i in range(1, 5)],
                            size=(48, 48), ext=".png")
    return train(TrainConfig(model="unet", data=str(data), out=str(root / "run"),
                             model_args={"width": 4, "out_channels": 1}, epochs=1, crop=32,
                             scale=0.5, workers=0, batch_size=2, repeats=1,
                             tune_postprocess=False, device="cpu"))


def test_evaluate_model_limit_1(glas_dir: Path, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    pred = Predictor.from_name(str(tiny_run), device="cpu")
    assert pred.scale == 0.5 and pred.task == "binary"
    metrics = evaluate_model(pred, glas_dir, out, name="tiny-unet", limit=1)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk) == {"testA", "testB"}
    for part in ("testA", "testB"):
        m = on_disk[part]
        assert set(m) == {"n_images", "n_images_total", "partial", "pooled", "per_image"}
        assert m["n_images"] == 1 and m["n_images_total"] > 1 and m["partial"] is True
        assert set(m["pooled"]) == POOLED and set(m["per_image"]) == PER_IMAGE
        for k in ("f1", "object_dice", "pixel_dice", "count_score"):
            v = m["per_image"][k]
            assert 0.0 <= v <= 1.0 or np.isnan(v), (part, k, v)
        assert m["per_image"]["bce"] > 0
        assert all(isinstance(m["pooled"][k], int) and m["pooled"][k] >= 0
                   for k in ("tp", "fp", "fn"))
        assert m["pooled"]["tp"] + m["pooled"]["fn"] > 0  # GlaS images have glands
        assert m["pooled"]["f1"] == pytest.approx(metrics[part]["pooled"]["f1"], nan_ok=True)
    # predictions: 16-bit labels at the image size, for the first image of each part only
    preds = sorted(p.name for p in (out / "predictions").iterdir())
    assert preds == ["testA_1.png", "testB_1.png"]
    for stem in ("testA_1", "testB_1"):
        img = read_image(next(glas_dir.glob(f"{stem}.*")))
        lab = read_label(out / "predictions" / f"{stem}.png")
        assert lab.shape == img.shape[:2]
    for part in ("testA", "testB"):
        assert (out / f"fig4_{part}.png").read_bytes()[:8] == PNG
    board = (out / "leaderboard.txt").read_text()
    assert "tiny-unet" in board
    with open(out / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum("tiny-unet" in json.dumps(r) for r in rows) == 1 and len(rows) > 1
    with open(out / "per_image.csv", newline="") as f:
        per = list(csv.DictReader(f))
    assert len(per) == 2
    assert not [p for p in out.rglob(".*")]  # no temp files left
