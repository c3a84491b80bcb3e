"""U-Nets: the study's plain U-Net (Ronneberger et al. 2015) and a U-Net decoder on a
pretrained timm encoder.

Both map a float image batch ``(B, 3, H, W)`` (normalised, see ``preprocess`` in the model
config) to logits ``(B, C, H, W)``. ``C = 1`` for the study's sigmoid/BCE target and
``C = 3`` (background, gland interior, gland boundary) for the contour-aware target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(cin: int, cout: int, bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in ((cin, cout), (cout, cout)):
        layers.append(nn.Conv2d(a, b, 3, padding=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """The study's U-Net: 4 down levels (``width``·1, 2, 4, 8 channels) and a bottleneck of
    ``width``·16 (64 → 1024 by default), two padded 3×3 conv + ReLU per level, 2×2 max-pool,
    2×2 transposed-conv up-sampling, skip concatenation, 1×1 output conv.

    Input sides must be multiples of 16 (the Predictor pads). ``batch_norm`` is off in the
    original; it is an option because it trains faster from scratch.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: int = 64,
                 batch_norm: bool = False) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(5)]
        self.downs = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.downs.append(_double_conv(cin, c, batch_norm))
            cin = c
        self.bottleneck = _double_conv(chans[-2], chans[-1], batch_norm)
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.ups.append(nn.ConvTranspose2d(c * 2, c, 2, stride=2))
            self.up_convs.append(_double_conv(c * 2, c, batch_norm))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        self.stride = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips), strict=True):
            x = conv(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class _DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin + cskip, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class EncoderUNet(nn.Module):
    """U-Net decoder on a feature-pyramid encoder (strides 2, 4, 8, 16, 32).

    ``encoder`` must have ``feature_info.channels()`` (a timm ``features_only`` model).
    Input sides must be multiples of 32.
    """

    def __init__(self, encoder: nn.Module, out_channels: int = 3,
                 decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16)) -> None:
        super().__init__()
        self.encoder = encoder
        enc = list(encoder.feature_info.channels())  # e.g. [16, 24, 40, 112, 320]
        skips = enc[:-1][::-1] + [0]
        blocks, cin = [], enc[-1]
        for cskip, cout in zip(skips, decoder_channels, strict=True):
            blocks.append(_DecoderBlock(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, out_channels, 3, padding=1)
        self.stride = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        y = feats[-1]
        skips = feats[:-1][::-1] + [None]
        for block, skip in zip(self.decoder, skips, strict=True):
            y = block(y, skip)
        return self.head(y)
