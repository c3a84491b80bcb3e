"""DenseTask losses: the supervised loss and the optional blur-consistency term."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glandseg import GlandsegError
from glandseg.train.loop import make_task
from glandseg.train.tasks import DenseTask, blur_batch


def _batch(task: str, b: int = 2, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 3, size, size, generator=g)
    if task == "binary":
        target = (torch.rand(b, 1, size, size, generator=g) > 0.5).float()
    else:
        target = torch.randint(0, 3, (b, size, size), generator=g)
    return {"image": image, "target": target, "weight": torch.ones(b, size, size)}


def _net(out_ch: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, out_ch, 1))


MEAN, STD = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)


@pytest.mark.parametrize("task,ch", [("contour", 3), ("binary", 1)])
def test_zero_weight_is_the_plain_supervised_loss(task: str, ch: int) -> None:
    batch, net = _batch(task), _net(ch)
    plain = DenseTask(task).loss(net, batch, MEAN, STD)
    expect = DenseTask(task).supervised(net((batch["image"] - MEAN) / STD), batch)
    assert torch.allclose(plain, expect)


@pytest.mark.parametrize("task,ch", [("contour", 3), ("binary", 1)])
def test_consistency_adds_a_differentiable_term(task: str, ch: int) -> None:
    batch, net = _batch(task), _net(ch)
    torch.manual_seed(1)
    with_c = DenseTask(task, consistency=5.0).loss(net, batch, MEAN, STD)
    torch.manual_seed(1)
    no_c = DenseTask(task, consistency=1e-12).loss(net, batch, MEAN, STD)
    assert torch.isfinite(with_c) and with_c > no_c  # KL of different views is positive
    with_c.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("task,ch", [("contour", 3), ("binary", 1)])
def test_divergence_is_zero_for_equal_predictions_only(task: str, ch: int) -> None:
    t = DenseTask(task)
    a = torch.randn(2, ch, 8, 8)
    assert t.divergence(a, a).abs() < 1e-5
    assert t.divergence(a, a + torch.randn_like(a)) > 1e-3


def test_blur_batch_blurs_each_image_keeps_shape_and_range() -> None:
    x = torch.rand(3, 3, 40, 40)
    y = blur_batch(x, (1.0, 2.0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert 0 <= y.min() and y.max() <= 1
    # blur lowers the high-frequency energy of every image
    def hf(z: torch.Tensor) -> torch.Tensor:
        return (z[..., 1:, :] - z[..., :-1, :]).abs().mean(dim=(1, 2, 3))

    assert (hf(y) < 0.7 * hf(x)).all()


def test_make_task_reads_the_weight_and_refuses_it_for_mask_rcnn() -> None:
    cfg = {"task": "contour", "preprocess": {"scale": 1.0}, "train": {"consistency": 2.0}}
    assert make_task(cfg).consistency == 2.0
    with pytest.raises(GlandsegError, match="--consistency is for the U-Nets"):
        make_task({"task": "instances", "model": "maskrcnn-lite0",
                   "train": {"consistency": 1.0}})
