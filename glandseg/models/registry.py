"""One registry of model names → builders, default configurations and bundled weights.

A *model config* is a JSON-able dict that fully describes how to rebuild, feed and
post-process a model: ``{"model": NAME, "model_args": {...}, "task": "contour"|"binary"|
"instances", "preprocess": {"scale", "mean", "std"}, "postprocess": {...}, ...}``.
Named architectures: ``unet``, ``unet-lite0``, ``maskrcnn``, ``maskrcnn-lite0``;
bundled trained models: ``glas-unet``, ``glas-maskrcnn`` (``glandseg/weights/NAME.*``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from glandseg import GlandsegError
from glandseg.models.norms import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
BUNDLED = ("glas-unet", "glas-maskrcnn")

DEFAULT_POSTPROCESS = {
    "interior_threshold": 0.5,
    "foreground_threshold": 0.5,
    "min_area": 100,
    "min_seed_area": 30,
    "fill_holes": True,
}


def register(name: str, defaults: dict, description: str = ""):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelSpec(name, fn, defaults, description)
        return fn

    return deco


def _build_unet(cfg: dict) -> nn.Module:
    from glandseg.models.unet import UNet

    a = cfg["model_args"]
    return UNet(3, a.get("out_channels", 1), a.get("width", 64), a.get("batch_norm", False))


def _build_unet_lite(cfg: dict, pretrained: bool) -> nn.Module:
    from glandseg.models.encoders import create_encoder
    from glandseg.models.unet import EncoderUNet

    a = cfg["model_args"]
    enc = create_encoder(a.get("encoder", "lite0"), pretrained=pretrained)
    return EncoderUNet(enc, a.get("out_channels", 3), tuple(a.get("decoder_channels", (128, 64, 48, 32, 16))))


def _build_maskrcnn(cfg: dict, pretrained: bool) -> nn.Module:
    from glandseg.models import maskrcnn

    return maskrcnn.build(cfg, pretrained=pretrained)


register("unet", {
    "model_args": {"width": 64, "out_channels": 1, "batch_norm": False},
    "task": "binary",
    "preprocess": {"scale": 0.5, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    "postprocess": dict(DEFAULT_POSTPROCESS),
}, "the study's U-Net (Ronneberger 2015): 4 levels 64→1024, sigmoid output, BCE")(
    lambda cfg, pretrained=False: _build_unet(cfg))
register("unet-lite0", {
    "model_args": {"encoder": "lite0", "out_channels": 3, "decoder_channels": [128, 64, 48, 32, 16]},
    "task": "contour",
    "preprocess": {"scale": 0.5, "mean": list(LITE_MEAN), "std": list(LITE_STD)},
    "postprocess": dict(DEFAULT_POSTPROCESS),
}, "U-Net decoder on ImageNet EfficientNet-Lite0, interior/boundary target + watershed")(
    _build_unet_lite)
register("maskrcnn", {
    "model_args": {"backbone": "resnet50", "pretrained_source": "coco", "box_detections_per_img": 256},
    "task": "instances",
    "preprocess": {"scale": 1.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    "postprocess": {"score_threshold": 0.5, "mask_threshold": 0.5, "min_area": 100},
    # full resolution: a whole GlaS image (at most 775 × 522) is one tile
    "tiling": {"tile": 800, "overlap": 160, "batch_size": 1},
}, "torchvision Mask R-CNN, ResNet-50-FPN (the study's second model)")(_build_maskrcnn)
register("maskrcnn-lite0", {
    "model_args": {"backbone": "lite0", "box_detections_per_img": 256, "fpn_channels": 128,
                   "box_representation": 512, "mask_channels": 128, "head_norm": "group",
                   "box_batch_size_per_image": 256, "anchor_sizes": [24, 48, 96, 192, 384]},
    "task": "instances",
    "preprocess": {"scale": 0.5, "mean": list(LITE_MEAN), "std": list(LITE_STD)},
    "postprocess": {"score_threshold": 0.5, "mask_threshold": 0.5, "min_area": 100},
}, "Mask R-CNN on an ImageNet EfficientNet-Lite0 FPN backbone (trains offline)")(_build_maskrcnn)


def names() -> list[str]:
    """Architecture names followed by bundled model names."""
    return [*_REGISTRY, *BUNDLED]


def default_config(name: str) -> dict:
    """A fresh copy of the default model config of architecture ``name``."""
    if name not in _REGISTRY:
        raise GlandsegError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    cfg = copy.deepcopy(_REGISTRY[name].defaults)
    cfg["model"] = name
    return cfg


def build_model(cfg: dict, pretrained: bool = True) -> nn.Module:
    """Build the (untrained or ImageNet-initialised) network described by ``cfg``."""
    name = cfg["model"]
    if name not in _REGISTRY:
        raise GlandsegError(f"unknown model {name!r} in config; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name].builder(cfg, pretrained=pretrained)


def bundled_path(name: str) -> Path:
    """``glandseg/weights/NAME.safetensors`` of a bundled model (its config is ``NAME.json``)."""
    p = Path(str(resources.files("glandseg.weights") / f"{name}.safetensors"))
    if not p.is_file():
        raise GlandsegError(
            f"bundled model {name!r} is not installed ({p} missing); train one with "
            "`glandseg train` and pass --model RUN_DIR"
        )
    return p
