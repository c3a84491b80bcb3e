"""``glandseg score`` on implausible label images: warnings and errors name the file and
say which side ("prediction" / "annotation") is wrong; --split-gt's help says what it does."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from glandseg.cli import main
from glandseg.data.io import implausible_label
from glandseg.metrics import score
from tests.conftest import synth_pair


def _pair_dirs(tmp_path: Path, stems=("testA_1", "testA_2")) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for i, stem in enumerate(stems):
        _, lab = synth_pair(64, 80, n_glands=3, seed=i)
        Image.fromarray(lab).save(gt / f"{stem}_anno.png")
        Image.fromarray(lab.astype(np.uint16)).save(pred / f"{stem}.png")
    return pred, gt


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_plausible_labels_do_not_warn(tmp_path: Path, caplog) -> None:
    pred, gt = _pair_dirs(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert main(["score", str(pred), str(gt)]) == 0
    assert _warnings(caplog) == []


def test_grey_rgb_photograph_as_prediction_warns(tmp_path: Path, caplog) -> None:
    pred, gt = _pair_dirs(tmp_path)
    photo = data.camera()[::6, ::6][:64, :80]  # the whole scene, shrunk
    Image.fromarray(np.stack([photo] * 3, axis=2)).save(pred / "testA_2.png")  # R = G = B
    with caplog.at_level(logging.WARNING):
        assert main(["score", str(pred), str(gt)]) == 0
    (msg,) = _warnings(caplog)
    assert "testA_2.png" in msg and "prediction" in msg and "photograph" in msg
    assert "annotation" not in msg


def test_binary_255_annotation_warns(tmp_path: Path, caplog) -> None:
    pred, gt = _pair_dirs(tmp_path)
    _, lab = synth_pair(64, 80, n_glands=3, seed=0)
    Image.fromarray(((lab > 0) * 255).astype(np.uint8)).save(gt / "testA_1_anno.png")
    with caplog.at_level(logging.WARNING):
        main(["score", str(pred), str(gt)])
    (msg,) = _warnings(caplog)
    assert "testA_1_anno.png" in msg and "annotation" in msg and "0/255" in msg


def test_colour_prediction_error_says_prediction(tmp_path: Path, capsys) -> None:
    pred, gt = _pair_dirs(tmp_path)
    rgb = np.zeros((64, 80, 3), np.uint8)
    rgb[10:20, 10:20] = (255, 0, 0)
    Image.fromarray(rgb).save(pred / "testA_1.png")
    assert main(["score", str(pred), str(gt)]) == 1
    err = capsys.readouterr().err
    assert "testA_1.png: prediction is a colour image" in err and "annotation" not in err
    Image.fromarray(rgb).save(gt / "testA_2_anno.png")
    (pred / "testA_1.png").unlink()
    Image.fromarray(synth_pair(64, 80, 3, 0)[1]).save(pred / "testA_1.png")
    assert main(["score", str(pred), str(gt)]) == 1
    assert "testA_2_anno.png: annotation is a colour image" in capsys.readouterr().err


def test_implausible_label_thresholds() -> None:
    _, lab = synth_pair(64, 80, n_glands=3)
    assert implausible_label(lab) is None
    many = np.kron(np.arange(100).reshape(10, 10), np.ones((8, 8), int))  # 100 blocks
    assert implausible_label(many) is None  # many objects, but each a region
    assert "photograph" in implausible_label(data.camera())
    assert implausible_label(lab.astype(bool).astype(np.uint8)) is None  # 0/1: one object, ok


def test_split_gt_help_states_the_small_piece_rule(capsys) -> None:
    from glandseg.cli import score_cmd

    assert score_cmd.GT_MIN_PIECE == score.GT_MIN_PIECE
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert f"smaller than {score.GT_MIN_PIECE} px" in helptext and "delete" in helptext


def test_json_to_a_folder_is_one_line_error(tmp_path: Path, capsys) -> None:
    pred, gt = _pair_dirs(tmp_path)
    assert main(["score", str(pred), str(gt), "--json", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder" in err
