"""Input resolution: images are segmented at the model's resolution and labels come back at
the input's (ids kept); post-processing areas are model-resolution pixels; the resolution
is taken from the option, else the file, else the model's (said once)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from glandseg import GlandsegError
from glandseg.cli import main
from glandseg.data.io import read_label
from glandseg.infer import predictor as predictor_mod
from glandseg.infer.predictor import MPP_TOLERANCE, Predictor, resize_labels
from glandseg.models.config import GLAS_MPP, ModelConfig
from tests.conftest import synth_pair


class DarkStub(nn.Module):
    """A contour "model": interior where the image is dark, background where it is bright,
    no boundary; records the sizes it was fed."""

    stride = 8

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        interior = 20 * (0.62 - x.mean(1, keepdim=True))
        return torch.cat([-interior, interior, torch.full_like(interior, -10.0)], 1)


def config(min_area: int = 20) -> dict:
    return {"task": "contour", "preprocess": {"scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]},
            "postprocess": {"min_area": min_area, "min_seed_area": 5}}


def up2(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


def test_config_mpp_default_and_range() -> None:
    mc = ModelConfig.from_dict(config(), require_model=False)
    assert mc.mpp == GLAS_MPP == 0.62005
    raw = config()
    raw["preprocess"]["mpp"] = 0.25
    assert ModelConfig.from_dict(raw, require_model=False).mpp == 0.25
    assert ModelConfig.from_dict(raw, require_model=False).to_dict()["preprocess"]["mpp"] == 0.25
    for bad in (0, -1, "0.5", 1000):
        raw["preprocess"]["mpp"] = bad
        with pytest.raises(GlandsegError, match="preprocess.mpp"):
            ModelConfig.from_dict(raw, require_model=False)


def test_resize_labels_keeps_ids_and_shape() -> None:
    lab = np.array([[0, 7, 7], [3, 3, 0]], np.int32)
    big = resize_labels(lab, (4, 6))
    np.testing.assert_array_equal(big, up2(lab))
    np.testing.assert_array_equal(resize_labels(big, (2, 3)), lab)
    odd = resize_labels(lab, (5, 7))
    assert odd.shape == (5, 7) and set(np.unique(odd)) == {0, 3, 7}


def test_2x_input_segmented_at_model_resolution() -> None:
    img, _ = synth_pair(120, 160, n_glands=4, seed=1)
    model = DarkStub()
    pred = Predictor(model, config())
    native = pred.predict(img)
    assert native.max() == 4 and model.seen[-1] == (120, 160)

    big = np.array(Image.fromarray(img).resize((320, 240), Image.BICUBIC))
    labels = pred.predict(big, mpp=GLAS_MPP / 2)
    assert model.seen[-1] == (120, 160)  # the model saw the image at its own resolution
    assert labels.shape == (240, 320) and labels.dtype == np.int32
    assert len(np.unique(labels)) - 1 == 4  # the same glands, ids from the model's labels
    assert set(np.unique(labels)) == set(np.unique(native))
    assert np.mean((labels > 0) == up2(native > 0)) > 0.97
    # without the resolution the model sees the 2x image as it is
    pred.predict(big)
    assert model.seen[-1] == (240, 320)


def test_probabilities_at_input_resolution() -> None:
    img, _ = synth_pair(64, 80, n_glands=2, seed=2)
    pred = Predictor(DarkStub(), config())
    big = np.array(Image.fromarray(img).resize((160, 128), Image.BICUBIC))
    probs = pred.predict_proba(big, mpp=GLAS_MPP / 2)
    assert probs.shape == (3, 128, 160) and probs.dtype == np.float32
    labels, p2 = pred.predict_with_proba(big, mpp=GLAS_MPP / 2)
    assert labels.shape == (128, 160)
    np.testing.assert_allclose(p2.sum(0), 1, atol=1e-4)


def test_postprocess_areas_are_model_pixels() -> None:
    """A dark 8x8 square is 64 model px: below min_area 100 at the model's resolution even
    when the input shows it at 2x (256 input px)."""
    img = np.full((96, 96, 3), 230, np.uint8)
    img[40:48, 40:48] = 60
    pred = Predictor(DarkStub(), config(min_area=100))
    assert pred.predict(img).max() == 0
    big = up2(img)
    assert pred.predict(big, mpp=GLAS_MPP / 2).max() == 0
    assert pred.predict(big).max() == 1  # taken as model resolution, it is 256 px


def test_input_mpp_default_and_tolerance() -> None:
    img, _ = synth_pair(64, 64, n_glands=2, seed=3)
    model = DarkStub()
    pred = Predictor(model, config(), input_mpp=GLAS_MPP * 2)
    assert pred.zoom() == pytest.approx(2.0)
    assert pred.predict(img).shape == (64, 64) and model.seen[-1] == (128, 128)
    assert pred.zoom(GLAS_MPP * (1 + MPP_TOLERANCE / 2)) == 1.0
    assert pred.zoom(0.62) == 1.0  # GlaS written with 2 digits is not resampled
    for bad in (0, -0.5, float("nan"), float("inf")):
        with pytest.raises(GlandsegError, match="micrometres per pixel"):
            pred.zoom(bad)
    with pytest.raises(GlandsegError, match="input_mpp"):
        Predictor(DarkStub(), config(), input_mpp=-1)


def test_instance_model_gets_model_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_instances(pred, image):
        seen.append(image.shape[:2])
        lab = np.zeros(image.shape[:2], np.int32)
        lab[: image.shape[0] // 2] = 5
        return lab

    from glandseg.infer import instances

    monkeypatch.setattr(instances, "predict_instances", fake_instances)
    cfg = {"task": "instances", "preprocess": {"scale": 1.0, "mean": [0, 0, 0],
                                               "std": [1, 1, 1]}}
    pred = Predictor(nn.Identity(), cfg)
    labels = pred.predict(np.zeros((100, 60, 3), np.uint8), mpp=GLAS_MPP / 2)
    assert seen == [(50, 30)] and labels.shape == (100, 60)
    assert set(np.unique(labels)) == {0, 5} and labels[:50].min() == 5


def test_resolution_of_order_and_said_once(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    import tifffile

    img, _ = synth_pair(32, 32, n_glands=1)
    tagged = tmp_path / "tagged.tif"
    tifffile.imwrite(tagged, img, resolution=(1e4 / 0.25, 1e4 / 0.25),
                     resolutionunit="CENTIMETER")
    plain = [tmp_path / "a.png", tmp_path / "b.png"]
    for p in plain:
        Image.fromarray(img).save(p)
    pred = Predictor(DarkStub(), config())
    assert pred.resolution_of(tagged) == pytest.approx(0.25)
    assert pred.resolution_of(tagged, 0.5) == 0.5  # the option wins over the file
    with caplog.at_level(logging.INFO, logger="glandseg"):
        assert [pred.resolution_of(p) for p in plain] == [GLAS_MPP, GLAS_MPP]
    said = [r for r in caplog.records if "assuming the model's" in r.getMessage()]
    assert len(said) == 1 and "--input-mpp" in said[0].getMessage()
    pred.input_mpp = 0.4
    assert pred.resolution_of(tagged) == 0.4


@pytest.fixture
def stub_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Predictor.from_name`` builds the DarkStub (min_area 20) whatever the name."""

    def from_name(cls, spec, device="auto", backend="auto", threads=None, precision="fp32",
                  **kw):
        return cls(DarkStub(), config(), "cpu", **kw)

    monkeypatch.setattr(predictor_mod.Predictor, "from_name", classmethod(from_name))


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("opt", ["--input-mpp", "--mpp"])
def test_cli_input_mpp_drives_scale_and_um(opt: str, tmp_path: Path, stub_model: None,
                                           caplog: pytest.LogCaptureFixture) -> None:
    img, _ = synth_pair(60, 80, n_glands=2, seed=4)
    src = tmp_path / "big.png"
    Image.fromarray(up2(img)).save(src)
    out = tmp_path / "out"
    assert main(["predict", str(src), "--out", str(out), opt, "0.31"]) == 0
    labels = read_label(out / "big.png")
    assert labels.shape == (120, 160) and labels.max() == 2
    rows = _csv(out / "glands.csv")
    assert len(rows) == 2
    for r in rows:
        assert float(r["area_um2"]) == pytest.approx(int(r["area_px"]) * 0.31 ** 2, rel=1e-6)
    assert ("deprecated" in caplog.text) == (opt == "--mpp")


def test_cli_mpp_from_tiff_tags_and_alias_conflict(tmp_path: Path, stub_model: None,
                                                   capsys: pytest.CaptureFixture) -> None:
    import tifffile

    img, _ = synth_pair(60, 80, n_glands=2, seed=5)
    src = tmp_path / "scan.tif"
    tifffile.imwrite(src, up2(img), resolution=(25400 / 0.31, 25400 / 0.31),
                     resolutionunit="INCH")
    out = tmp_path / "out"
    assert main(["predict", str(src), "--out", str(out)]) == 0
    rows = _csv(out / "glands.csv")
    assert len(rows) == 2
    assert float(rows[0]["area_um2"]) == pytest.approx(int(rows[0]["area_px"]) * 0.31 ** 2,
                                                       rel=1e-4)
    capsys.readouterr()
    status = main(["predict", str(src), "--out", str(tmp_path / "o2"), "--mpp", "0.3",
                   "--input-mpp", "0.31"])
    assert status == 1 and "disagree" in capsys.readouterr().err


def test_cli_bad_input_mpp_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--input-mpp", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--input-mpp" in err and len(err.splitlines()) == 1


def test_cli_evaluate_input_mpp(tmp_path: Path, stub_model: None, make_glas,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate --input-mpp: predictions at the annotation's size, model fed at its own."""
    data = make_glas(names=("testA_1", "testB_1"), size=(80, 96), ext=".png")
    seen: list = []
    orig = DarkStub.forward

    def spy(self, x):
        seen.append(tuple(x.shape[-2:]))
        return orig(self, x)

    monkeypatch.setattr(DarkStub, "forward", spy)
    status = main(["evaluate", "--data", str(data), "--out", str(tmp_path / "ev"),
                   "--input-mpp", str(GLAS_MPP / 2), "-q"])
    assert status == 0
    truth = read_label(data / "testA_1_anno.png")
    assert read_label(tmp_path / "ev" / "predictions" / "testA_1.png").shape == truth.shape
    assert seen[0] == (40, 48)  # 80 x 96 at half resolution, a multiple of the stride 8
