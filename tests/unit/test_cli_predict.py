"""``glandseg predict`` end to end with a tiny trained run, and the verbs' --help."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glandseg.cli import main
from glandseg.data.io import read_label
from glandseg.train.loop import TrainConfig
from glandseg.train.run import train
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


@pytest.fixture(scope="module")
def fg_model(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's network with its head set to say "gland" everywhere (zero weights,
    bias +10): every image is one gland, so outputs and glands.csv rows are predictable."""
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("fg")
    sd = load_file(str(tiny_run / "best.safetensors"))
    sd["head.weight"].zero_()
    sd["head.bias"].fill_(10.0)
    save_file(sd, str(d / "fg.safetensors"))
    (d / "fg.json").write_text((tiny_run / "config.json").read_text())
    return d / "fg.safetensors"


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
                for suffix in (".png", "_overlay.png", ".geojson")} | {"glands.csv", "images.csv",
                                                                        "index.html"}
    # exactly the outputs of the good images (and glandseg's records): nothing for the bad
    # one, no temp files
    assert {p.name for p in out.iterdir()} == expected | {".glandseg"}
    assert sorted(p.name for p in (out / ".glandseg" / "images").iterdir()) == [
        "good_a.json", "good_b.json"]
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
                 str(out), "--model", str(tiny_run), "--device", "cpu", "--tile", "64"]) == 0
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


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_predict_into_the_input_folder_refused(tiny_run: Path, inputs: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    assert main(["predict", str(inputs), "--out", str(inputs), "--model", str(tiny_run),
                 "--device", "cpu"]) == 1
    err = _one_line_error(capsys.readouterr().err)
    assert "overwrite an input" in err and "good_a.png" in err
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before  # nothing written


def test_predict_rerun_flags(tiny_run: Path, inputs: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    (inputs / "broken.png").unlink()
    out = tmp_path / "out"
    base = ["predict", str(inputs), "--out", str(out), "--model", str(tiny_run), "--device",
            "cpu"]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base) == 1
    assert "--overwrite" in _one_line_error(capsys.readouterr().err)
    assert main([*base, "--skip-existing"]) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert main([*base, "--overwrite"]) == 0
    assert "segmented 2 image(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([*base, "--overwrite", "--skip-existing"])
    assert exc.value.code == 2


@pytest.mark.parametrize("opt,value,why", [("--tile", "1", "from 64 to 4096"),
                                           ("--tile", "-5", "from 64 to 4096"),
                                           ("--tile", "abc", "expected an integer"),
                                           ("--mpp", "-1", "above 0"),
                                           ("--mpp", "nan", "above 0")])
def test_bad_numeric_options_one_line(inputs: Path, tmp_path: Path, opt: str, value: str,
                                      why: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(inputs), "--out", str(tmp_path / "o"), f"{opt}={value}"])
    assert exc.value.code == 2
    err = _one_line_error(capsys.readouterr().err)
    assert opt in err and why in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("verb", ["evaluate", "demo"])
def test_tile_checked_on_every_verb(verb: str, tmp_path: Path, capsys) -> None:
    extra = ["--data", str(tmp_path), "--out", str(tmp_path / "o")] if verb == "evaluate" else []
    with pytest.raises(SystemExit):
        main([verb, *extra, "--tile", "1"])
    assert "--tile" in _one_line_error(capsys.readouterr().err)


def test_evaluate_limit_must_be_positive(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--limit", "0"])
    assert "--limit" in _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_missing_accelerator_is_one_line_error(tiny_run: Path, inputs: Path, tmp_path: Path,
                                               monkeypatch, capsys, device: str) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert main(["predict", str(inputs), "--out", str(tmp_path / "o"), "--model",
                 str(tiny_run), "--device", device]) == 1
    err = _one_line_error(capsys.readouterr().err)
    assert f"{device!r}" in err and "not available" in err and "--device cpu" in err
    assert not (tmp_path / "o").exists()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_and_quiet(tiny_run: Path, inputs: Path, tmp_path: Path, monkeypatch,
                                quiet: bool) -> None:
    (inputs / "broken.png").unlink()
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    q = ["-q"] if quiet else []
    assert main(["predict", *q, str(inputs), "--out", str(tmp_path / "o"), "--model",
                 str(tiny_run), "--device", "cpu"]) == 0
    bar = "predict: 100%" in err.getvalue() and "2/2" in err.getvalue()
    assert bar != quiet, err.getvalue()


def test_two_concurrent_predict_processes_merge(fg_model: Path, tmp_path: Path) -> None:
    """Two real ``glandseg predict`` processes into one folder: both runs' rows survive."""
    out = tmp_path / "out"
    groups = []
    for g in ("x", "y"):
        d = tmp_path / g
        d.mkdir()
        for i in range(3):
            img, _ = synth_pair(48, 56, n_glands=2, seed=10 * i + ord(g))
            Image.fromarray(img).save(d / f"{g}{i}.png")
        groups.append(d)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-m", "glandseg", "-q", "predict", str(d),
                               "--out", str(out), "--model", str(fg_model), "--device", "cpu"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for d in groups]
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
    with open(out / "glands.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    stems = sorted(f"{g}{i}" for g in "xy" for i in range(3))
    assert sorted(r["image"] for r in rows) == stems  # one gland each, from both runs
    for r in rows:
        assert int(r["area_px"]) == 48 * 56 and read_label(out / f"{r['image']}.png").max() == 1
