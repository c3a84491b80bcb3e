"""`glandseg score` on temporary folders, and the metrics on a few real GlaS images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from glandseg.cli import main
from glandseg.data.io import read_label, write_label
from glandseg.metrics.score import score_dirs, score_pairs


def _gt(seed: int) -> np.ndarray:
    lab = np.zeros((24, 32), np.int32)
    lab[2:8, 2:10] = 1
    lab[12:20, 5:12] = 2
    lab[4:14, 18:28] = 3 + seed
    return lab


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    gt_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    for i, stem in enumerate(["testA_1", "testA_2", "testB_1"]):
        write_label(gt_dir / f"{stem}_anno.png", _gt(i))
        write_label(pred_dir / f"{stem}.png", _gt(i))
    return pred_dir, gt_dir


def test_score_cli_writes_json(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    # an imperfect testB prediction, as a TIFF with large 32-bit ids
    (pred_dir / "testB_1.png").unlink()
    import tifffile

    tifffile.imwrite(pred_dir / "testB_1.tif", np.roll(_gt(2), 1, axis=1).astype(np.uint32) * 100000)
    out = tmp_path / "res" / "m.json"
    csv_path = tmp_path / "rows.csv"
    assert main(["score", str(pred_dir), str(gt_dir), "--json", str(out), "--csv", str(csv_path)]) == 0
    printed = capsys.readouterr().out
    assert "testA" in printed and "testB" in printed
    m = json.loads(out.read_text())
    assert list(m) == ["testA", "testB"]
    assert m["testA"]["n_images"] == 2 and m["testB"]["n_images"] == 1
    assert m["testA"]["pooled"] == {
        "f1": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0, "tp": 6, "fp": 0, "fn": 0
    }
    b = m["testB"]
    assert b["pooled"]["tp"] == 3 and 0.8 < b["pooled"]["object_dice"] < 1
    assert b["pooled"]["object_hausdorff"] == pytest.approx(1.0)  # shifted by one column
    assert set(b["per_image"]) == {"f1", "object_dice", "object_hausdorff"}
    assert csv_path.read_text().splitlines()[0].startswith("stem,part,n_pred,n_gt,tp,fp,fn,f1")
    assert score_dirs(pred_dir, gt_dir) == m


def test_score_cli_names_missing_predictions(folders, capsys):
    pred_dir, gt_dir = folders
    (pred_dir / "testA_2.png").unlink()
    (pred_dir / "testB_1.png").unlink()
    # testB has no prediction left: that part is left out (named in the log); testA has
    # one of its two: the missing one is an error naming it
    assert main(["score", str(pred_dir), str(gt_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "testA_2.png" in err and "testA_1.png" not in err
    # asking for testB explicitly: its missing prediction is named too
    assert main(["score", str(pred_dir), str(gt_dir), "--parts", "testA,testB"]) == 1
    err = capsys.readouterr().err.strip()
    assert "testA_2.png" in err and "testB_1.png" in err and "testA_1.png" not in err


def test_score_cli_names_wrong_shapes(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    write_label(pred_dir / "testA_1.png", np.zeros((5, 5), np.int32))
    out = tmp_path / "m.json"
    assert main(["score", str(pred_dir), str(gt_dir), "--json", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "testA_1.png" in err and "testA_1_anno.png" in err
    assert not out.exists()


def test_score_cli_bad_folders(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope"), str(tmp_path)]) == 1
    assert "nope" in capsys.readouterr().err
    (tmp_path / "p").mkdir()
    assert main(["score", str(tmp_path / "p"), str(tmp_path)]) == 1
    assert "no annotations" in capsys.readouterr().err


# ------------------------------------------------------------------ real GlaS


def _glas() -> Path:
    env = os.environ.get("GLANDSEG_GLAS")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "glas"


@pytest.fixture(scope="module")
def glas_truths() -> list[tuple[str, np.ndarray]]:
    root = _glas()
    stems = ["testA_1", "testA_2", "testB_1", "testB_2"]
    if not all((root / f"{s}_anno.png").is_file() for s in stems):
        pytest.skip(f"GlaS data set not found at {root} (set GLANDSEG_GLAS to its folder)")
    return [(s, read_label(root / f"{s}_anno.png")) for s in stems]


@pytest.mark.glas
def test_glas_truth_against_itself_is_perfect(glas_truths):
    m = score_pairs([(s, g, g) for s, g in glas_truths])
    for part in ("testA", "testB"):
        for agg in ("pooled", "per_image"):
            assert m[part][agg]["f1"] == 1.0
            assert m[part][agg]["object_dice"] == 1.0
            assert m[part][agg]["object_hausdorff"] == 0.0
        assert m[part]["pooled"]["fp"] == 0 and m[part]["pooled"]["fn"] == 0


@pytest.mark.glas
def test_glas_shifted_and_eroded_truth_is_plausible(glas_truths):
    items = []
    for s, g in glas_truths:
        shifted = np.zeros_like(g)
        shifted[4:, 6:] = g[:-4, :-6]
        uniform = ndimage.minimum_filter(g, 7) == ndimage.maximum_filter(g, 7)
        items.append((s, shifted, g))
        items.append((s + "_eroded", np.where(uniform, g, 0), g))  # part "other"
    m = score_pairs(items)
    for part in ("testA", "testB", "other"):
        p = m[part]["pooled"]
        assert 0.6 < p["f1"] <= 1.0
        assert 0.7 < p["object_dice"] < 1.0
        assert 3.0 <= p["object_hausdorff"] < 60.0
    # a 4x6 shift moves every matched boundary by sqrt(52) ~ 7.2 px
    assert m["testA"]["pooled"]["object_hausdorff"] >= np.hypot(4, 6) - 1e-9
