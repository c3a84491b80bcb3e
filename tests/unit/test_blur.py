"""Focus measurement and ``--deblur auto`` (glandseg.data.blur, the predictor's use of it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.filters import gaussian

from glandseg import GlandsegError
from glandseg.cli import main
from glandseg.data.blur import GLAS_BLUR_SIGMA, Deblur, estimate_blur, unsharp
from glandseg.infer.predictor import Predictor
from tests.conftest import Recorder


def blocks(seed: int = 0, size: int = 256) -> np.ndarray:
    """``uint8 (size, size, 3)``: coloured rectangles with sharp (step) edges on white."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 230, np.uint8)
    for _ in range(60):
        y, x = rng.integers(0, size - 26, 2)
        h, w = rng.integers(8, 40, 2)
        img[y:y + h, x:x + w] = rng.integers(40, 200, 3)
    return img


def blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    out = gaussian(img, sigma=sigma, channel_axis=-1, preserve_range=True)
    return (out + 0.5).clip(0, 255).astype(np.uint8)


def test_estimate_recovers_added_gaussian_blur() -> None:
    img = blocks()
    base = estimate_blur(img)  # the Sobel operator's own width: ~0.8 px for a step
    assert 0.6 < base < 1.0
    prev = base
    for s in (1.0, 1.5, 2.0, 3.0):
        est = estimate_blur(blurred(img, s))
        assert est > prev  # monotone
        assert est == pytest.approx(np.hypot(base, s), rel=0.08), s  # widths add in quadrature
        prev = est
    # float input in [0, 1] reads the same
    assert estimate_blur(img / 255.0) == pytest.approx(base, abs=1e-6)


def test_estimate_edge_cases() -> None:
    assert estimate_blur(np.full((32, 32, 3), 128, np.uint8)) == 0.0
    with pytest.raises(ValueError, match="RGB"):
        estimate_blur(np.zeros((32, 32), np.uint8))


def test_unsharp_keeps_dtype_and_range() -> None:
    img = blurred(blocks(), 2.0)
    out = unsharp(img, 1.0, 4.0)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert estimate_blur(out) < estimate_blur(img)
    f = unsharp(img / 255.0, 1.0, 4.0)
    assert f.dtype == np.float32 and 0.0 <= f.min() and f.max() <= 1.0
    np.testing.assert_allclose(f * 255, out, atol=1.0)


def test_deblur_passes_sharp_images_and_sharpens_blurred_ones() -> None:
    img = blocks()
    d = Deblur(reference=estimate_blur(img))
    same, extra = d(img)
    assert same is img and extra < d.threshold
    soft = blurred(img, 1.5)
    out, extra = d(soft)
    assert extra == pytest.approx(1.5, abs=0.2)
    assert out is not soft and out.dtype == np.uint8
    # sharpened towards the original: closer to it than the blurred copy is
    err = lambda a: np.abs(a.astype(float) - img).mean()  # noqa: E731
    assert err(out) < err(soft)
    assert estimate_blur(out) < estimate_blur(soft)
    # a slight blur below the threshold passes unchanged
    slight = blurred(img, 0.4)
    assert d(slight)[0] is slight


CFG = {"task": "contour", "preprocess": {"scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]}}


def seen(model: Recorder) -> np.ndarray:
    return model.inputs[-1][0].permute(1, 2, 0).numpy()


def test_predictor_deblur_auto() -> None:
    sharp = blocks(1, 128)
    soft = blurred(sharp, 2.0)
    model = Recorder()
    pred = Predictor(model, CFG)
    assert pred.deblur is None
    pred.predict_proba(soft)
    np.testing.assert_allclose(seen(model), soft / 255.0, atol=1e-6)  # off: untouched
    pred.deblur = "auto"
    assert pred.deblur == "auto"
    pred.predict_proba(soft)
    ref, extra = Deblur()(soft / 255.0)
    assert pred.last_extra_blur == pytest.approx(extra) and extra > 1.0
    np.testing.assert_allclose(seen(model), ref, atol=1e-5)  # sharpened as Deblur does
    pred.predict_proba(sharp)  # a sharp image passes unchanged
    np.testing.assert_allclose(seen(model), sharp / 255.0, atol=1e-6)
    pred.deblur = "off"
    assert pred.deblur is None
    with pytest.raises(GlandsegError, match="deblur"):
        pred.deblur = "always"


def test_instance_models_ignore_deblur() -> None:
    pred = Predictor(Recorder(), {**CFG, "task": "instances"}, deblur="auto")
    assert pred.deblur is None


def test_cli_deblur_choices(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--deblur", "on"])
    assert exc.value.code == 2
    assert "--deblur" in capsys.readouterr().err


@pytest.mark.glas
def test_glas_reference_and_blurred_copies(glas_dir: Path) -> None:
    """The reference is the median of the training images (here a subset: 12 of the 67
    training-split images); a 1.5 px Gaussian blur reads as ~1.5 px of extra blur."""
    from glandseg.data.dataset import patient_split
    from glandseg.data.discover import discover
    from glandseg.data.io import read_image

    train, _ = patient_split(discover(glas_dir, splits=("train",)), 0.2, 0)
    imgs = [read_image(s.image) for s in train[::6][:12]]
    est = [estimate_blur(im) for im in imgs]
    assert np.median(est) == pytest.approx(GLAS_BLUR_SIGMA, abs=0.06)
    d = Deblur()
    assert all(d(im)[0] is im for im in imgs)  # no training image is sharpened
    extra = [d.extra(blurred(im, 1.5)) for im in imgs[:4]]
    assert all(1.2 < e < 1.8 for e in extra), extra


def test_cli_default_is_auto_and_reaches_the_predictor() -> None:
    import argparse

    from glandseg.cli.predict_cmd import DEFAULT_DEBLUR, add_model_args, make_predictor

    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args(["--model", "unet", "--device", "cpu"])
    assert args.deblur == DEFAULT_DEBLUR == "auto"
    assert make_predictor(args).deblur == "auto"
    args = p.parse_args(["--model", "unet", "--device", "cpu", "--deblur", "off"])
    assert make_predictor(args).deblur is None


def test_predictor_says_whether_it_sharpened() -> None:
    sharp = blocks(2, 128)
    pred = Predictor(Recorder(), CFG)
    pred.predict_proba(blurred(sharp, 2.0))
    assert not pred.last_sharpened  # deblur off
    pred.deblur = "auto"
    pred.predict_proba(blurred(sharp, 2.0))
    assert pred.last_sharpened
    pred.predict_proba(sharp)
    assert not pred.last_sharpened


def test_large_images_are_measured_on_a_sample_of_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slide window (over 4 MP) is measured on 3 x 3 blocks: close to the whole-image
    figure, sharp and blurred alike."""
    from skimage.filters import gaussian

    from glandseg.data import blur

    rng = np.random.default_rng(3)
    base = gaussian(rng.random((2100, 2100)), 2.0)  # texture with edges at every scale
    base = (base - base.min()) / np.ptp(base)
    for extra in (0.0, 1.5):
        g = gaussian(base, extra) if extra else base
        img = np.repeat(g[..., None], 3, axis=2)
        sampled = blur.estimate_blur(img)
        monkeypatch.setattr(blur, "SAMPLE_ABOVE", 10**12)
        whole = blur.estimate_blur(img)
        monkeypatch.setattr(blur, "SAMPLE_ABOVE", 4_000_000)
        assert sampled == pytest.approx(whole, rel=0.05), (extra, sampled, whole)


def test_sobel_magnitude_equals_skimage() -> None:
    from skimage.filters import sobel

    from glandseg.data.blur import sobel_magnitude

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (2, 7), (40, 33)]:
        g = rng.random(shape)
        assert np.allclose(sobel_magnitude(g), sobel(g), rtol=1e-12, atol=1e-15)
