"""``evaluate_model`` on real GlaS Test A/B images (``limit=1``); skipped without the data.

A tiny U-Net trained on synthetic images checks the outputs' contract (its figures mean
nothing, so they are checked against an independent scoring of its saved predictions); the
bundled glas-unet on the same images checks that the figures are a working model's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from glandseg.data.io import read_image, read_label
from glandseg.engine.evaluate import evaluate_model
from glandseg.infer.predictor import Predictor
from glandseg.train.loop import TrainConfig
from glandseg.train.run import train
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
        assert m["per_image"]["bce"] > 0
        assert all(isinstance(m["pooled"][k], int) and m["pooled"][k] >= 0
                   for k in ("tp", "fp", "fn"))
        assert m["pooled"]["f1"] == pytest.approx(metrics[part]["pooled"]["f1"], nan_ok=True)
    # the figures are those of the saved predictions against the annotations, scored anew
    from glandseg.metrics.score import score_pairs

    stems = ("testA_1", "testB_1")
    anew = score_pairs([(s, read_label(out / "predictions" / f"{s}.png"),
                         read_label(next(glas_dir.glob(f"{s}_anno.*")))) for s in stems])
    for part in ("testA", "testB"):
        got, ref = on_disk[part]["pooled"], anew[part]["pooled"]
        assert {k: got[k] for k in ("tp", "fp", "fn")} == {k: ref[k] for k in ("tp", "fp", "fn")}
        assert got["tp"] + got["fn"] == int(read_label(next(glas_dir.glob(
            f"{part}_1_anno.*"))).max())  # every annotated gland counted once
        for k in ("f1", "object_dice", "object_hausdorff"):
            assert got[k] == pytest.approx(ref[k], nan_ok=True), (part, k)
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


def test_bundled_model_figures_on_the_first_images(glas_dir: Path, tmp_path: Path) -> None:
    """The bundled glas-unet through ``evaluate_model`` on testA_1 and testB_1 reaches a
    working model's figures (committed full evaluation: F1 0.75 / 0.67, object Dice 0.71 /
    0.85); a broken model, loader or post-processing falls far below."""
    pred = Predictor.from_name("glas-unet", device="cpu", deblur="auto")
    metrics = evaluate_model(pred, glas_dir, tmp_path / "eval", name="glas-unet", limit=1)
    for part, (f1, dice) in {"testA": (0.65, 0.65), "testB": (0.6, 0.8)}.items():
        m = metrics[part]["pooled"]
        assert m["f1"] >= f1 and m["object_dice"] >= dice, (part, m)
        assert m["object_hausdorff"] < 250, (part, m)
