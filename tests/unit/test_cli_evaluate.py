"""``glandseg evaluate --limit`` marks partial results; ``glandseg demo`` re-runs safely.

A tiny U-Net whose head says "gland" everywhere keeps these fast and deterministic."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from glandseg.cli import main
from glandseg.train.loop import TrainConfig
from glandseg.train.run import train
from tests.conftest import make_glas_folder

NAMES = ["train_1", "train_2", "train_3", "train_4", "testA_1", "testA_2", "testA_3", "testB_1", "testB_2"]


@pytest.fixture(scope="module")
def glas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_glas_folder(tmp_path_factory.mktemp("ev") / "glas", names=NAMES,
                            size=(48, 48), ext=".png")


@pytest.fixture(scope="module")
def fg_model(glas: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("fg")
    run = train(TrainConfig(model="unet", data=str(glas), out=str(d / "run"),
                            model_args={"width": 4, "out_channels": 1}, epochs=1, crop=32,
                            scale=1.0, workers=0, batch_size=2, repeats=1,
                            tune_postprocess=False, device="cpu"))
    sd = load_file(str(run / "best.safetensors"))
    sd["head.weight"].zero_()
    sd["head.bias"].fill_(10.0)
    save_file(sd, str(d / "fg.safetensors"))
    (d / "fg.json").write_text((run / "config.json").read_text())
    return d / "fg.safetensors"


def test_evaluate_limit_is_marked_partial(glas: Path, fg_model: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ev"
    assert main(["-q", "evaluate", "--model", str(fg_model), "--data", str(glas), "--out",
                 str(out), "--name", "quick", "--limit", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "PARTIAL" in printed and "testA 1 of 3" in printed
    assert "Official GlaS metrics" not in printed
    for name in ("metrics.json", "metrics_split_gt.json"):
        m = json.loads((out / name).read_text())
        assert (m["testA"]["n_images"], m["testA"]["n_images_total"]) == (1, 3)
        assert (m["testB"]["n_images"], m["testB"]["n_images_total"]) == (1, 2)
        assert m["testA"]["partial"] is True and m["testB"]["partial"] is True
    board = (out / "leaderboard.txt").read_text()
    row = next(ln for ln in board.splitlines() if "quick" in ln)
    assert row.split()[0] == "-" and "quick~" in row and "PARTIAL" in board
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    ours = [r for r in rows if r["method"] == "quick"]
    assert len(ours) == 1 and ours[0]["place"] == "" and ours[0]["kind"] == "ours_partial"


def test_evaluate_all_images_not_partial_in_metrics(glas: Path, fg_model: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert main(["-q", "evaluate", "--model", str(fg_model), "--data", str(glas), "--out",
                 str(out), "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["testA"]["partial"] is False and m["testA"]["n_images"] == 3
    # every image of this folder, but not the official 60 + 20: still not ranked
    assert "PARTIAL" in (out / "leaderboard.txt").read_text()
    # what produced the figures: the CLI's defaults (deblur auto), the model's fingerprint
    st = json.loads((out / "settings.json").read_text())
    assert st["deblur"] == "auto" and st["tta"] is False and st["stain_norm"] is None
    assert st["model"] == "unet" and len(st["model_fingerprint"]) == 64 and st["limit"] is None
    assert st["backend"] == "onnx"  # the CPU default
    assert st["splits"] == ["testA", "testB"] and st["data"] == str(glas)
    assert isinstance(st["sharpened_images"], dict)
    assert main(["-q", "evaluate", "--model", str(fg_model), "--data", str(glas), "--out",
                 str(tmp_path / "ev2"), "--device", "cpu", "--deblur", "off", "--limit", "1"]) == 0
    st2 = json.loads((tmp_path / "ev2" / "settings.json").read_text())
    assert st2["deblur"] == "off" and st2["limit"] == 1 and st2["sharpened_images"] == {}
    assert st2["model_fingerprint"] == st["model_fingerprint"]
    assert main(["-q", "evaluate", "--model", str(fg_model), "--data", str(glas), "--out",
                 str(tmp_path / "ev3"), "--device", "cpu", "--backend", "torch", "--limit", "1"]) == 0
    st3 = json.loads((tmp_path / "ev3" / "settings.json").read_text())
    assert st3["backend"] == "torch" and st3["model_fingerprint"] == st["model_fingerprint"]
    # one fingerprint of the weights: the one the grader and the ONNX graphs record
    from glandseg.infer.predictor import Predictor
    from glandseg.models.fingerprint import config_fingerprint

    pred = Predictor.from_name(str(fg_model), device="cpu")
    assert st["model_fingerprint"] == pred.fingerprint
    assert st["model_config_fingerprint"] == config_fingerprint(pred.config, pred.fingerprint)


def test_evaluate_out_is_a_file(glas: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "f").write_text("x")
    assert main(["evaluate", "--data", str(glas), "--out", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "existing file" in err


def test_demo_reruns_but_never_replaces_foreign_files(fg_model: Path, tmp_path: Path,
                                                      capsys) -> None:
    out = tmp_path / "demo"
    base = ["-q", "demo", "--model", str(fg_model), "--device", "cpu", "--out", str(out)]
    assert main(base) == 0
    assert main(base) == 0  # a second `make demo` works
    rows = list(csv.DictReader((out / "glands.csv").open()))
    assert [r["image"] for r in rows] == ["immunohistochemistry"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "immunohistochemistry.geojson").write_text("mine")
    capsys.readouterr()
    assert main([*base[:-1], str(other)]) == 1
    assert "not written by glandseg" in capsys.readouterr().err
    assert (other / "immunohistochemistry.geojson").read_text() == "mine"
    assert not (other / "immunohistochemistry.png").exists()
