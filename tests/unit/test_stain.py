"""Stain normalisation maps an image's stain statistics to the bundled GlaS reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glandseg import GlandsegError
from glandseg.cli import main
from glandseg.data import stain
from glandseg.infer.predictor import Predictor
from tests.conftest import Recorder

REF = stain.load_reference()


def he_image(he: np.ndarray, max_c: tuple[float, float], seed: int = 0,
             shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A synthetic H&E image: per pixel H and E concentrations (independent, so some pixels
    are nearly pure H or pure E) mixed with the stain vectors ``he`` (3 x 2 optical
    density), a white background strip on the left."""
    rng = np.random.default_rng(seed)
    c = rng.random((2, *shape)) ** 2 * np.asarray(max_c)[:, None, None]
    c[:, :, : shape[1] // 5] = 0
    od = np.einsum("ck,khw->hwc", he, c)
    return np.clip(stain.IO * np.exp(-od), 0, 255).astype(np.uint8)


def unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


SOURCE_HE = np.stack([unit([0.85, 0.5, 0.2]), unit([0.3, 0.9, 0.35])], axis=1)


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    return np.sum(a * b, axis=0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)


def test_bundled_reference_is_valid() -> None:
    he = np.asarray(REF["macenko"]["stain_matrix"])
    assert he.shape == (3, 2) and np.all(he > 0)
    assert he[0, 0] > he[0, 1]  # haematoxylin absorbs more red than eosin does
    assert "training patients" in REF["source"]


def test_macenko_maps_stain_statistics_to_the_reference() -> None:
    img = he_image(SOURCE_HE, (1.0, 0.7))
    before = stain.macenko_stats(img)
    ref_he = np.asarray(REF["macenko"]["stain_matrix"])
    ref_c = np.asarray(REF["macenko"]["max_concentrations"])
    # the source differs from the reference (so the test can fail) ...
    assert cosines(before["stain_matrix"], ref_he).min() < 0.97
    assert np.abs(np.asarray(before["max_concentrations"]) / ref_c - 1).max() > 0.3
    out = stain.StainNormalizer("macenko")(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    after = stain.macenko_stats(out)
    # ... and the normalised image has the reference's stain vectors and concentrations
    assert cosines(after["stain_matrix"], ref_he).min() > 0.995
    np.testing.assert_allclose(after["max_concentrations"], ref_c, rtol=0.1)
    assert stain.tissue_mask(out)[:, :20].sum() == 0  # background stays background


def test_reinhard_maps_lab_statistics_to_the_reference() -> None:
    img = he_image(SOURCE_HE, (1.0, 0.7), seed=1)
    ref_mean, ref_std = np.asarray(REF["reinhard"]["mean"]), np.asarray(REF["reinhard"]["std"])
    before = stain.reinhard_stats(img)
    assert np.abs(np.asarray(before["mean"]) - ref_mean).max() > 5
    after = stain.reinhard_stats(stain.StainNormalizer("reinhard")(img))
    np.testing.assert_allclose(after["mean"], ref_mean, atol=2.0)
    np.testing.assert_allclose(after["std"], ref_std, rtol=0.12)


def test_blank_or_flat_images_unchanged() -> None:
    white = np.full((64, 64, 3), 250, np.uint8)
    flat = np.full((64, 64, 3), 120, np.uint8)
    for method in stain.METHODS:
        n = stain.StainNormalizer(method)
        np.testing.assert_array_equal(n(white), white)
        np.testing.assert_array_equal(n(flat), flat)


def test_bad_inputs() -> None:
    with pytest.raises(GlandsegError, match="macenko, reinhard"):
        stain.StainNormalizer("vahadane")
    with pytest.raises(ValueError, match="uint8"):
        stain.StainNormalizer("macenko")(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="too little tissue"):
        stain.macenko_stats(np.full((32, 32, 3), 255, np.uint8))


def test_broken_reference_file(tmp_path: Path) -> None:
    p = tmp_path / "ref.json"
    p.write_text(json.dumps({"macenko": {"stain_matrix": [[1, 2]], "max_concentrations": [1, 1]},
                             "reinhard": {"mean": [0, 0, 0], "std": [1, 1, 1]}}))
    with pytest.raises(GlandsegError, match="ref.json"):
        stain.load_reference(p)
    p.write_text("{")
    with pytest.raises(GlandsegError, match="not a glandseg stain reference"):
        stain.load_reference(p)


def test_fit_reference_recovers_the_stains() -> None:
    he = np.asarray(REF["macenko"]["stain_matrix"])
    images = [he_image(he, (1.5, 1.2), seed=s) for s in range(3)]
    ref = stain.fit_reference(images, per_image=5000)
    assert ref["pixels"] == 15000
    assert cosines(ref["macenko"]["stain_matrix"], he).min() > 0.995


def test_predictor_normalises_before_predicting() -> None:
    img = he_image(SOURCE_HE, (1.0, 0.7), shape=(64, 64))
    model = Recorder()
    cfg = {"task": "contour", "preprocess": {"scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]}}
    pred = Predictor(model, cfg, stain_norm="macenko")
    assert pred.stain_norm == "macenko"
    pred.predict_proba(img)
    seen = (model.inputs[-1][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(seen, stain.StainNormalizer("macenko")(img))
    pred.stain_norm = None
    pred.predict_proba(img)
    seen = (model.inputs[-1][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(seen, img)


def test_cli_stain_norm_choices(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--stain-norm", "foo"])
    assert exc.value.code == 2
    assert "--stain-norm" in capsys.readouterr().err
