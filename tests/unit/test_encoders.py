"""Pretrained encoders: offline EfficientNet-Lite weights mapped onto timm models."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from glandseg import GlandsegError
from glandseg.models.encoders import create_encoder, lite_weights_file, load_lite_state_dict


@pytest.fixture(scope="module")
def lite0_pth() -> dict[str, torch.Tensor]:
    return torch.load(lite_weights_file("lite0"), map_location="cpu", weights_only=True)


def test_pretrained_lite0_loads_the_package_weights(lite0_pth) -> None:
    enc = create_encoder("lite0", pretrained=True)
    sd = enc.state_dict()
    # The package names differ from timm's; the first tensor is the stem conv in both.
    assert torch.equal(sd["conv_stem.weight"], lite0_pth["_conv_stem.weight"])
    # ... and the first block's BN statistics map by order too (not just the first tensor).
    src_vals = list(lite0_pth.values())
    full_keys = list(timm.create_model("efficientnet_lite0", pretrained=False).state_dict())
    by_name = dict(zip(full_keys, src_vals, strict=True))
    checked = 0
    for k, v in sd.items():
        assert torch.equal(v, by_name[k]), k
        checked += 1
    assert checked == len(sd) > 100


def test_not_pretrained_differs_from_package_weights(lite0_pth) -> None:
    enc = create_encoder("lite0", pretrained=False)
    assert not torch.equal(enc.state_dict()["conv_stem.weight"], lite0_pth["_conv_stem.weight"])


def test_features_only_channels() -> None:
    enc = create_encoder("lite0", pretrained=False)
    assert list(enc.feature_info.channels()) == [16, 24, 40, 112, 320]
    assert list(enc.feature_info.reduction()) == [2, 4, 8, 16, 32]


def test_shape_mismatch_raises(lite0_pth, tmp_path: Path) -> None:
    bad = dict(lite0_pth)
    first = next(iter(bad))
    bad[first] = torch.zeros(8, 3, 3, 3)  # stem has 32 output channels
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    enc = create_encoder("lite0", pretrained=False)
    before = enc.state_dict()["conv_stem.weight"].clone()
    with pytest.raises(GlandsegError, match="shape mismatch"):
        load_lite_state_dict(enc, path)
    assert torch.equal(enc.state_dict()["conv_stem.weight"], before)  # nothing half-loaded


def test_tensor_count_mismatch_raises(lite0_pth, tmp_path: Path) -> None:
    bad = dict(list(lite0_pth.items())[:-1])
    path = tmp_path / "short.pth"
    torch.save(bad, path)
    with pytest.raises(GlandsegError, match="tensors"):
        load_lite_state_dict(create_encoder("lite0", pretrained=False), path)


@pytest.mark.parametrize("name", ["resnet50", "lite9", ""])
def test_unknown_encoder(name: str) -> None:
    with pytest.raises(GlandsegError, match="unknown encoder"):
        create_encoder(name, pretrained=False)


# -- the weights checked functionally: the ImageNet classifier recognises photographs --------

#: ImageNet classes: 281-285 domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian);
#: 967 espresso, 968 cup, 504 coffee mug.
CATS = {281, 282, 283, 284, 285}
COFFEE = {967, 968, 504}


@pytest.fixture(scope="module")
def lite0_classifier() -> torch.nn.Module:
    """The full EfficientNet-Lite0 classifier with the package's ImageNet weights."""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    load_lite_state_dict(model, lite_weights_file("lite0"))
    return model.eval()


def _preprocess(image, mean, std) -> torch.Tensor:
    """``uint8 (H, W, 3)`` → ``float32 (1, 3, 224, 224)`` normalised as glandseg feeds the
    encoder: ``(x / 255 - mean) / std`` (antialiased bilinear resize, no crop)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True,
                                        align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("photo, classes", [("chelsea", CATS), ("coffee", COFFEE)])
def test_lite0_classifies_photographs(lite0_classifier, photo: str, classes: set[int]) -> None:
    """chelsea() is a tabby cat, coffee() a cup of espresso: with the right weights and the
    preprocessing of the registry's ``unet-lite0`` (the encoder's input scaling), the top-1
    class is in the set and the set holds > 50 % of the probability (measured: cat 0.93,
    coffee 0.84). Shuffled, mis-mapped or missing weights give near-uniform guesses."""
    from skimage import data

    from glandseg.models.registry import default_config

    pre = default_config("unet-lite0")["preprocess"]
    x = _preprocess(getattr(data, photo)(), pre["mean"], pre["std"])
    with torch.no_grad():
        p = lite0_classifier(x).softmax(1)[0]
    top5 = p.topk(5).indices.tolist()
    assert top5[0] in classes, (photo, top5)
    assert float(p[sorted(classes)].sum()) > 0.5, (photo, top5)


def test_untrained_lite0_does_not_classify(lite0_classifier) -> None:
    """The check above can fail: the same network without the weights does not see a cat."""
    from skimage import data

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    x = _preprocess(data.chelsea(), (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        p = model(x).softmax(1)[0]
    assert float(p[sorted(CATS)].sum()) < 0.1


def test_encoder_features_match_the_classifier(lite0_classifier) -> None:
    """``create_encoder`` (the U-Net's encoder) holds the same weights as the classifier
    that recognised the cat: its deepest features equal the classifier's trunk output."""
    from skimage import data

    enc = create_encoder("lite0", pretrained=True).eval()
    x = _preprocess(data.chelsea(), (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        feats = enc(x)[-1]
        trunk = lite0_classifier.blocks(lite0_classifier.bn1(lite0_classifier.conv_stem(x)))
    assert feats.shape == trunk.shape == (1, 320, 7, 7)
    torch.testing.assert_close(feats, trunk)
