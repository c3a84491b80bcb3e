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
