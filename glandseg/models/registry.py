"""One registry of model names → builders and bundled weights.

A *model config* (:class:`glandseg.models.config.ModelConfig`; as JSON ``{"model": NAME,
"model_args": {...}, "task": "contour"|"binary"|"instances", "preprocess": {"mpp", "scale",
"mean", "std"}, "tiling": {...}, "postprocess": {...}, ...}``) fully describes how to rebuild, feed
and post-process a model. The architectures' defaults and ``model_args`` checks are in
:mod:`glandseg.models.architectures` (re-exported here: :func:`architectures`,
:func:`default_config`, :func:`check_model_args`, :data:`BUNDLED`, ...); this module builds
the networks (:func:`build_model`, after :meth:`ModelConfig.from_dict` checked the config)
and finds bundled weights.
Importing it does not import torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from glandseg import GlandsegError
from glandseg.models import architectures as arch
from glandseg.models.architectures import (
    BUNDLED,
    DETECTOR_RANGES,
    ENCODER_NAMES,
    ArgsCheck,
    ModelSpec,
    architectures,
    check_model_args,
    default_config,
    names,
)
from glandseg.models.config import ModelConfig

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

__all__ = ["BUILDERS", "BUNDLED", "DETECTOR_RANGES", "ENCODER_NAMES", "ArgsCheck", "ModelSpec",
           "architectures", "build_model", "bundled_path", "check_model_args",
           "default_config", "names", "register"]


# --- builders (torch is imported here, on first use) ----------------------------------

def _build_unet(cfg: dict) -> nn.Module:
    from glandseg.models.unet import UNet

    a = cfg["model_args"]
    return UNet(3, a["out_channels"], a["width"], a["batch_norm"])


def _build_unet_lite(cfg: dict, pretrained: bool) -> nn.Module:
    from glandseg.models.encoders import create_encoder
    from glandseg.models.unet import EncoderUNet

    a = cfg["model_args"]
    enc = create_encoder(a["encoder"], pretrained=pretrained)
    return EncoderUNet(enc, a["out_channels"], tuple(a["decoder_channels"]))


def _build_maskrcnn(cfg: dict, pretrained: bool) -> nn.Module:
    from glandseg.models import maskrcnn

    return maskrcnn.build(cfg, pretrained=pretrained)

#: Architecture name → ``builder(config dict, pretrained) -> nn.Module``.
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": lambda cfg, pretrained=False: _build_unet(cfg),
    "unet-lite0": _build_unet_lite,
    "maskrcnn": _build_maskrcnn,
    "maskrcnn-lite0": _build_maskrcnn,
}


def register(name: str, defaults: dict, description: str = "",
             check_args: ArgsCheck | None = None, tasks: tuple[str, ...] = ()):
    """Decorator: a new architecture ``name`` (:func:`glandseg.models.architectures.add`)
    built by the decorated ``builder(cfg, pretrained)``."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        arch.add(name, defaults, description, check_args, tasks)
        BUILDERS[name] = fn
        return fn

    return deco


def build_model(cfg: Mapping | ModelConfig, pretrained: bool = True,
                source: str | None = None) -> nn.Module:
    """Build the (untrained or ImageNet-initialised) network described by ``cfg``, after
    checking it (:meth:`ModelConfig.from_dict`, errors name ``source``), so a bad
    architecture argument is refused before any memory is allocated."""
    mc = cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_dict(cfg, source)
    arch.spec(mc.model)  # one-line error for an unknown name
    return BUILDERS[mc.model](mc.to_dict(), pretrained=pretrained)


def bundled_path(name: str) -> Path:
    """``glandseg/weights/NAME.safetensors`` of a bundled model (its config is ``NAME.json``)."""
    p = Path(str(resources.files("glandseg.weights") / f"{name}.safetensors"))
    if not p.is_file():
        raise GlandsegError(
            f"bundled model {name!r} is not installed ({p} missing); train one with "
            "`glandseg train` and pass --model RUN_DIR"
        )
    return p
