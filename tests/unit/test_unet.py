"""U-Net architectures: output shapes and the study's channel progression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glandseg.models.encoders import create_encoder
from glandseg.models.unet import EncoderUNet, UNet


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("out_channels", [1, 3])
def test_unet_width4_output_shape(out_channels: int) -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=3, out_channels=out_channels, width=4).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, out_channels, 64, 64)
    assert torch.isfinite(y).all()
    assert net.stride == 16


def test_unet_non_square_input_multiple_of_16() -> None:
    net = UNet(out_channels=1, width=4).eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 3, 48, 80))
    assert y.shape == (1, 1, 48, 80)


def test_unet_default_width_channel_progression_64_to_1024() -> None:
    """Inspect modules only: the default U-Net is 64 → 128 → 256 → 512 → 1024."""
    net = UNet()  # width 64, never run forward at this size
    down_out = [_convs(d)[-1].out_channels for d in net.downs]
    assert down_out == [64, 128, 256, 512]
    assert _convs(net.downs[0])[0].in_channels == 3
    bott = _convs(net.bottleneck)
    assert bott[0].in_channels == 512 and bott[-1].out_channels == 1024
    # decoder mirrors the encoder: transposed convs halve channels, skip concat doubles them
    assert [u.in_channels for u in net.ups] == [1024, 512, 256, 128]
    assert [u.out_channels for u in net.ups] == [512, 256, 128, 64]
    assert [_convs(c)[0].in_channels for c in net.up_convs] == [1024, 512, 256, 128]
    assert net.head.in_channels == 64 and net.head.out_channels == 1
    assert net.head.kernel_size == (1, 1)
    # the original has no batch norm: two 3x3 convs per level, 4 down + bottleneck + 4 up
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(c.kernel_size == (3, 3) for c in _convs(net)) == 2 * 9


def test_unet_batch_norm_option() -> None:
    net = UNet(width=4, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2 * 9
    assert all(c.bias is None for c in _convs(net) if c.kernel_size == (3, 3))


@pytest.mark.parametrize("out_channels", [3, 1])
def test_encoder_unet_lite0_output_shape(out_channels: int) -> None:
    torch.manual_seed(0)
    net = EncoderUNet(create_encoder("lite0", pretrained=False), out_channels=out_channels).eval()
    assert net.stride == 32
    with torch.no_grad():
        y = net(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, out_channels, 64, 64)
    assert torch.isfinite(y).all()
