"""``glandseg predict`` end to end with a tiny trained run, and the verbs' --help."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glandseg.cli import main
from glandseg.data.io import read_label
from glandseg.train.loop import TrainConfig, train
from tests.conftest import make_glas_folder, synth_pair


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    data = make_glas_folder(root / "glas", names=[f"train_{i}" for i in range(1, 5)],
                            size=(48, 48), ext=".png")
    return train(TrainConfig(model="unet", data=str(data), out=str(root / "run"),
                             model_args={"width": 4, "out_channels": 1}, epochs=1, crop=32,
                             scale=1.0, workers=0, batch_size=2, repeats=1,
                             tune_postprocess=False, device="cpu"))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for i, stem in enumerate(("good_a", "good_b")):
        img, _ = synth_pair(56 + 8 * i, 64, n_glands=2, seed=i)
        Image.fromarray(img).save(d / f"{stem}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    return d


def test_predict_folder_with_a_corrupt_file(tiny_run: Path, inputs: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    status = main(["predict", str(inputs), "--out", str(out), "--model", str(tiny_run),
                   "--device", "cpu"])
    assert status == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.out + captured.err
    assert "good_a" not in [ln for ln in captured.out.splitlines() if ln.startswith("failed")]
    expected = {f"{s}{suffix}" for s in ("good_a", "good_b")
                for suffix in (".png", "_overlay.png", ".geojson")} | {"glands.csv"}
    # exactly the outputs of the good images: nothing for the bad one, no temp files
    assert {p.name for p in out.iterdir()} == expected
    for stem, h in (("good_a", 56), ("good_b", 64)):
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode in ("I;16", "I;16B", "I") and im.size == (64, h)
        labels = read_label(out / f"{stem}.png")
        assert labels.shape == (h, 64) and labels.min() >= 0
        with Image.open(out / f"{stem}_overlay.png") as im:
            assert im.mode == "RGB" and im.size == (64, h)
        gj = json.loads((out / f"{stem}.geojson").read_text())
        assert gj["type"] == "FeatureCollection"
        assert len(gj["features"]) == len(np.unique(labels[labels > 0]))
    with open(out / "glands.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_glands = sum(len(np.unique(read_label(out / f"{s}.png"))) - 1 for s in ("good_a", "good_b"))
    assert len(rows) == n_glands
    assert f"{n_glands} gland(s)" in captured.out and "segmented 2 image(s)" in captured.out


def test_predict_all_good_exits_zero(tiny_run: Path, inputs: Path, tmp_path: Path) -> None:
    (inputs / "broken.png").unlink()
    out = tmp_path / "out"
    assert main(["predict", str(inputs / "good_a.png"), str(inputs / "good_b.png"), "--out",
                 str(out), "--model", str(tiny_run), "--device", "cpu", "--tile", "32"]) == 0
    assert (out / "good_b.png").is_file() and (out / "glands.csv").is_file()


def test_predict_run_without_weights_is_one_line_error(tmp_path: Path, inputs: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "unet", "task": "binary"}))
    assert main(["predict", str(inputs), "--out", str(tmp_path / "o"), "--model", str(run),
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no best.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_predict_missing_input(tiny_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path / "nope*.png"), "--out", str(tmp_path / "o"),
                 "--model", str(tiny_run)]) == 1
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("verb,flag", [("train", "--resume"), ("predict", "--tta"),
                                       ("evaluate", "--limit")])
def test_help_exits_zero(verb: str, flag: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert flag in capsys.readouterr().out
