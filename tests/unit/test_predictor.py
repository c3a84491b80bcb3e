"""The Predictor with stub models whose outputs are known functions of the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from glandseg.infer.predictor import Predictor, TileConfig, _starts, _window

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)


class PixelStub(nn.Module):
    """1x1 conv with fixed weights: output at a pixel depends on that pixel only, so tiling,
    padding and blending must reproduce whole-image prediction exactly."""

    def __init__(self, out_channels: int = 3, stride: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 1)
        with torch.no_grad():
            w = torch.arange(out_channels * 3, dtype=torch.float32).view(out_channels, 3, 1, 1)
            self.conv.weight.copy_((w - w.mean()) / 4)
            self.conv.bias.copy_(torch.linspace(-0.5, 0.5, out_channels))
        self.stride = stride
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        assert x.shape[-2] % self.stride == 0 and x.shape[-1] % self.stride == 0
        return self.conv(x)


class SymmetricStub(nn.Module):
    """3x3 conv with a kernel symmetric under both flips (zero padding): flip-equivariant,
    but not per-pixel, so TTA only matches because of the symmetry."""

    stride = 16

    def __init__(self, symmetric: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        g = torch.Generator().manual_seed(0)
        k = torch.randn(3, 3, 3, 3, generator=g)
        if symmetric:
            k = (k + k.flip(2) + k.flip(3) + k.flip(2, 3)) / 4
        with torch.no_grad():
            self.conv.weight.copy_(k)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def config(task: str = "contour", scale: float = 1.0) -> dict:
    post = {"min_area": 5, "min_seed_area": 2} if task == "contour" else {"min_area": 5}
    return {"task": task, "preprocess": {"scale": scale, "mean": list(MEAN), "std": list(STD)},
            "postprocess": post}


def rand_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def expected_probs(model: PixelStub, image: np.ndarray, task: str) -> np.ndarray:
    """What a per-pixel model must give, computed here without the Predictor."""
    x = image.astype(np.float64) / 255.0
    x = (x - np.array(MEAN)) / np.array(STD)
    w = model.conv.weight.detach().double().numpy()[:, :, 0, 0]
    b = model.conv.bias.detach().double().numpy()
    logits = np.einsum("hwc,kc->khw", x, w) + b[:, None, None]
    if task == "binary":
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


@pytest.mark.parametrize("task,channels", [("contour", 3), ("binary", 1)])
def test_whole_image_matches_per_pixel_formula(task: str, channels: int) -> None:
    model = PixelStub(channels)
    image = rand_image(37, 53)
    probs = Predictor(model, config(task)).predict_proba(image)
    assert probs.dtype == np.float32 and probs.shape == (channels, 37, 53)
    np.testing.assert_allclose(probs, expected_probs(model, image, task), atol=1e-5)


def test_tiled_equals_whole_image() -> None:
    model = PixelStub(3)
    image = rand_image(150, 230, seed=1)
    whole = Predictor(model, config(), tiling=TileConfig(tile=512)).predict_proba(image)
    model.seen.clear()
    tiled_pred = Predictor(model, config(), tiling=TileConfig(tile=72, overlap=20, batch_size=3))
    tiled = tiled_pred.predict_proba(image)
    # it really tiled: several forward calls on 72-px tiles (padded to 80)
    assert len(model.seen) > 1
    assert all(x.shape[-2:] == (80, 80) for x in model.seen)
    assert sum(x.shape[0] for x in model.seen) == len(_starts(150, 72, 52)) * len(_starts(230, 72, 52))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    np.testing.assert_allclose(tiled, expected_probs(model, image, "contour"), atol=1e-5)


def test_tiles_cover_the_image() -> None:
    for n, tile, step in [(100, 40, 28), (40, 40, 28), (41, 40, 1), (1000, 512, 416)]:
        s = _starts(n, tile, step)
        assert s[0] == 0 and s[-1] + min(tile, n) == n
        assert all(b - a <= step for a, b in zip(s, s[1:], strict=False))
    w = _window(40, 40, 12)
    assert w.shape == (40, 40) and (w > 0).all() and w[20, 20] == 1.0


def test_scale_half_output_at_input_size() -> None:
    model = PixelStub(3)
    image = np.empty((50, 71, 3), np.uint8)
    image[...] = (200, 100, 50)  # constant: resampling cannot change a pixel's value
    pred = Predictor(model, config(scale=0.5))
    probs = pred.predict_proba(image)
    assert probs.shape == (3, 50, 71)
    assert model.seen[-1].shape[-2:] == (32, 48)  # 25 x 36 at half scale, padded to 16
    np.testing.assert_allclose(probs, expected_probs(model, image, "contour"), atol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    labels = pred.predict(image)
    assert labels.shape == (50, 71) and labels.dtype == np.int32


def test_scale_half_tiled_output_at_input_size() -> None:
    model = PixelStub(1)
    image = rand_image(260, 180, seed=3)
    pred = Predictor(model, config("binary", scale=0.5), tiling=TileConfig(tile=64, overlap=16))
    probs = pred.predict_proba(image)
    assert len(model.seen) > 1  # 130 x 90 at half scale: really tiled
    assert probs.shape == (1, 260, 180)
    whole = Predictor(model, config("binary", scale=0.5)).predict_proba(image)
    np.testing.assert_allclose(probs, whole, atol=1e-5)


def test_tta_with_flip_equivariant_model_equals_no_tta() -> None:
    image = rand_image(45, 61, seed=2)
    model = SymmetricStub(symmetric=True)
    plain = Predictor(model, config(), tta=False).predict_proba(image)
    tta = Predictor(model, config(), tta=True).predict_proba(image)
    np.testing.assert_allclose(tta, plain, atol=1e-5)


def test_tta_changes_a_non_equivariant_model() -> None:
    """Control for the test above: TTA really averages flipped predictions."""
    image = rand_image(45, 61, seed=2)
    model = SymmetricStub(symmetric=False)
    plain = Predictor(model, config(), tta=False).predict_proba(image)
    tta = Predictor(model, config(), tta=True).predict_proba(image)
    assert np.abs(tta - plain).max() > 1e-3


@pytest.mark.parametrize("h,w,mode", [(33, 37, "reflect"), (5, 37, "constant"), (1, 1, "constant"),
                                      (16, 16, "none")])
def test_padding_path_for_odd_sizes(h: int, w: int, mode: str) -> None:
    model = PixelStub(3)
    image = rand_image(h, w, seed=4)
    probs = Predictor(model, config()).predict_proba(image)
    assert probs.shape == (3, h, w)
    np.testing.assert_allclose(probs, expected_probs(model, image, "contour"), atol=1e-5)
    x = model.seen[-1][0]
    H, W = x.shape[-2:]
    assert (H, W) == (h + (-h) % 16, w + (-w) % 16)
    if mode == "reflect":
        # rows below the image mirror the rows above the last one (reflect, edge excluded)
        torch.testing.assert_close(x[:, h, :w], x[:, h - 2, :w])
        torch.testing.assert_close(x[:, :h, w], x[:, :h, w - 2])
    elif mode == "constant":
        assert (x[:, h:, :] == 0).all() and (x[:, :, w:] == 0).all()


def test_predict_applies_postprocess_from_config() -> None:
    model = PixelStub(3)
    image = rand_image(32, 32)
    pred = Predictor(model, config())
    probs = pred.predict_proba(image)
    np.testing.assert_array_equal(pred.predict(image), pred.postprocess(probs))
    assert pred.stride == 16 and pred.task == "contour"


# --- config and device checks ----------------------------------------------------------

def test_config_is_checked_and_typed() -> None:
    from glandseg import GlandsegError
    from glandseg.models.config import ContourPost, ModelConfig

    pred = Predictor(PixelStub(3), {**config(), "tiling": {"tile": 64, "overlap": 8}})
    assert pred.tiling == TileConfig(64, 8, 2)
    assert isinstance(pred.model_config, ModelConfig)
    assert pred.model_config.postprocess == ContourPost(min_area=5, min_seed_area=2)
    assert pred.config["postprocess"]["interior_threshold"] == 0.5  # defaults filled
    for bad, key in [({**config(), "tilling": {}}, "tilling"),
                     ({**config(), "preprocess": {**config()["preprocess"], "std": [1, 0, 1]}},
                      "preprocess.std"),
                     ({**config(), "task": "segmentation"}, "task")]:
        with pytest.raises(GlandsegError, match=key):
            Predictor(PixelStub(3), bad)


def test_postprocess_params_replace_only_what_they_name() -> None:
    from glandseg import GlandsegError

    pred = Predictor(PixelStub(3), config())
    probs = pred.predict_proba(rand_image(32, 32))
    assert pred.postprocess(probs, {"min_area": 10**6}).max() == 0  # nothing that large
    np.testing.assert_array_equal(pred.postprocess(probs, {"min_area": 5}),
                                  pred.postprocess(probs))
    with pytest.raises(GlandsegError, match="postprocess.min_areaa"):
        pred.postprocess(probs, {"min_areaa": 5})


def test_unavailable_device_is_a_one_line_error() -> None:
    from glandseg import GlandsegError
    from glandseg.infer.predictor import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(GlandsegError, match="not a device name"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(GlandsegError, match="CUDA is not available") as e:
            pick_device("cuda")
        assert "\n" not in str(e.value) and "--device cpu" in str(e.value)
    else:
        with pytest.raises(GlandsegError, match="CUDA device"):
            pick_device(f"cuda:{torch.cuda.device_count()}")
