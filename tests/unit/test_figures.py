"""Figures: training curves and the best / average / worst grid write non-empty PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glandseg import GlandsegError
from glandseg.report import figures as f


def _png_ok(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_training_curves_from_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "metrics.csv"
    lines = ["epoch,train_loss,val_loss,val_f1,val_object_dice,val_object_hausdorff"]
    for e in range(1, 6):
        val = f"{1 / e:.3f},{0.5 + e / 20:.3f},{0.6 + e / 30:.3f},{100 / e:.1f}" if e % 2 else ",,,"
        lines.append(f"{e},{1.2 / e:.3f},{val}")
    csv_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "curves.png"
    f.training_curves(csv_path, out)
    w, h = _png_ok(out)
    assert w > h  # three panels side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.csv"]


def test_training_curves_partial_columns_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "c.png"
    f.training_curves([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}], out)
    _png_ok(out)
    with pytest.raises(GlandsegError, match="nothing to plot"):
        f.training_curves([{"epoch": 1, "note": "x"}], tmp_path / "d.png")
    with pytest.raises(GlandsegError, match="not found"):
        f.training_curves(tmp_path / "missing.csv", tmp_path / "e.png")


def _record(name: str, score: float, rng: np.random.Generator) -> f.ImageRecord:
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    truth = np.zeros((40, 50), np.int32)
    truth[5:20, 5:20] = 1
    truth[25:35, 30:45] = 2
    pred = truth.copy()
    pred[25:35, 30:45] = 0
    return f.ImageRecord(
        name, image, truth, pred, {"object_dice": score, "object_hausdorff": 1 / score}
    )


def test_best_average_worst(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = [_record(f"img{i}", s, rng) for i, s in enumerate([0.9, 0.5, 0.7, 0.2, float("nan")])]
    out = tmp_path / "fig4.png"
    picks = f.best_average_worst(items, out)
    _png_ok(out)
    # mean of finite scores = 0.575 -> closest is 0.5
    assert picks == [("Best", "img0", 0.9), ("Average", "img1", 0.5), ("Worst", "img3", 0.2)]
    # Hausdorff: lower is better (1.11, 2, 1.43, 5; mean 2.39 -> closest 2)
    picks_h = f.pick_best_average_worst(items, key="object_hausdorff")
    assert [p[1].name for p in picks_h] == ["img0", "img1", "img3"]
    # dict records with a plain "score"
    dicts = [
        {
            "name": it.name,
            "image": it.image,
            "truth": it.truth,
            "pred": it.pred,
            "score": it.scores["object_dice"],
        }
        for it in items[:2]
    ]
    assert [p[1] for p in f.best_average_worst(dicts, tmp_path / "d.png")][0] == "img0"
    with pytest.raises(GlandsegError):
        f.pick_best_average_worst(items[-1:])
