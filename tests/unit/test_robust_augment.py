"""Acquisition-robustness augmentations (stain, blur, JPEG): off by default, image only."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from glandseg.data.transforms import AugmentConfig, robust_ops, train_transform
from tests.conftest import synth_pair


def _kinds(t: v2.Compose) -> set[str]:
    out = set()
    for op in t.transforms:
        inner = op.transforms if isinstance(op, v2.RandomApply) else [op]
        out |= {type(i).__name__ for i in inner}
    return out


def test_off_by_default() -> None:
    assert AugmentConfig().robust is False
    assert not {"JPEG", "GaussianBlur"} & _kinds(train_transform(AugmentConfig(crop=32)))
    assert {"JPEG", "GaussianBlur"} <= _kinds(train_transform(AugmentConfig(crop=32,
                                                                            robust=True)))


def test_each_op_changes_the_image_never_the_mask() -> None:
    img, lab = synth_pair(64, 64, n_glands=3)
    image = tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1).contiguous())
    mask = tv_tensors.Mask(torch.from_numpy(lab).long())
    torch.manual_seed(0)
    for op in robust_ops():
        inner = op.transforms[0]  # the transform without its RandomApply probability
        out_img, out_mask = inner(image, mask)
        assert out_img.dtype == torch.uint8 and out_img.shape == image.shape
        assert (out_img.int() - image.int()).abs().float().mean() > 0.5, type(inner).__name__
        assert torch.equal(out_mask, mask)


def test_robust_p_sets_the_probabilities() -> None:
    ops = robust_ops(0.8)
    assert [op.p for op in ops] == [0.8, 0.8, 0.4]
    assert [op.p for op in robust_ops()] == [0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="robust_p"):
        robust_ops(1.5)
    cfg = AugmentConfig(crop=32, robust=True, robust_p=0.0)
    probs = [op.p for op in train_transform(cfg).transforms if isinstance(op, v2.RandomApply)]
    assert probs[-3:] == [0.0, 0.0, 0.0]


def test_robust_p_needs_robust_on_the_command_line(capsys: pytest.CaptureFixture) -> None:
    from glandseg.cli import main

    assert main(["train", "--data", "x", "--out", "y", "--robust-p", "0.8"]) != 0
    assert "add --robust" in capsys.readouterr().err
