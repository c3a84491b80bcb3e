"""Training parameters from a file: ``glandseg train --params best.json``.

A params file is a JSON object; its ``"train"`` object (the ``best.json`` that
``glandseg search`` writes), or the whole object when it has no ``"train"``, maps
:class:`~glandseg.train.loop.TrainConfig` field names to values::

    {"train": {"model": "unet-lite0", "lr": 0.0012, "weight_decay": 3e-05, "batch_size": 8,
               "crop": 256, "augment_strength": 0.8, "loss_weights": {"dice": 0.7},
               "model_args": {"encoder": "lite0"}, "epochs": 12, "scale": 0.5}}

Every key and range is checked here, before anything is trained (one-line
:class:`~glandseg.GlandsegError` naming the file and the key). ``loss_weights`` names the
parts of the model family's loss (:data:`LOSS_PARTS`); ``model_args`` is checked by the
model registry when the network is built. No torch import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from glandseg import GlandsegError
from glandseg.models.config import (
    TILE_MAX,
    TILE_MIN,
    check_bool,
    check_choice,
    check_number,
    config_error,
)

#: Loss parts a ``loss_weights`` entry may weight, per model family. Dense (U-Net):
#: ``dice`` = weight of the soft Dice term beside the weighted cross-entropy (default 0.5).
#: Instances (Mask R-CNN): torchvision's losses without their ``loss_`` prefix (default 1).
LOSS_PARTS = {
    "unet": ("dice",),
    "maskrcnn": ("classifier", "box_reg", "mask", "objectness", "rpn_box_reg"),
}
LOSS_WEIGHT_MAX = 100.0
AUGMENT_MAX = 2.0

#: Numeric training settings: (integer?, low, high, low excluded?): the one table of ranges
#: (``glandseg train``'s options, params files, :class:`glandseg.train.config.TrainConfig`).
NUMBERS: dict[str, tuple[bool, float, float, bool]] = {
    "epochs": (True, 1, 100_000, False),
    "batch_size": (True, 1, 1024, False),
    "lr": (False, 0.0, 1.0, True),
    "weight_decay": (False, 0.0, 1.0, False),
    "momentum": (False, 0.0, 1.0, False),
    "crop": (True, 32, 4096, False),
    "scale": (False, 0.0, 4.0, True),
    "tile": (True, TILE_MIN, TILE_MAX, False),
    "repeats": (True, 1, 10_000, False),
    "val_fraction": (False, 0.0, 0.9, True),
    "val_every": (True, 1, 100_000, False),
    "seed": (True, 0, 2**32 - 1, False),
    "augment_strength": (False, 0.0, AUGMENT_MAX, False),
    "workers": (True, 0, 64, False),
    "max_minutes": (False, 0.0, 1e6, False),
    "robust_p": (False, 0.0, 1.0, False),
    "consistency": (False, 0.0, 100.0, False),
}
#: Settings with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("sgd", "adam", "adamw"), "schedule": ("cosine", "constant"),
    "device": ("auto", "cpu", "cuda", "mps")}
#: What a params file may set of :data:`NUMBERS` and :data:`CHOICES`.
_NUMBERS = {k: NUMBERS[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "momentum",
                                    "crop", "scale", "tile", "repeats", "val_fraction",
                                    "val_every", "seed", "augment_strength")}
_CHOICES = {k: CHOICES[k] for k in ("optimizer", "schedule")}
#: Every field a params file may set.
PARAM_KEYS = ("model", *_NUMBERS, *_CHOICES, "pretrained", "loss_weights", "model_args")


def family(model: str) -> str:
    """``"maskrcnn"`` for the Mask R-CNN architectures, else ``"unet"``."""
    return "maskrcnn" if model.startswith("maskrcnn") else "unet"


def check_loss_weights(model: str, weights: object, where: str) -> dict[str, float]:
    """``{part: weight}`` checked against the parts of ``model``'s loss (:data:`LOSS_PARTS`),
    each weight in ``[0, 100]``."""
    if not isinstance(weights, Mapping):
        raise config_error(where, f"loss_weights must be an object such as {{\"dice\": 0.5}}, "
                                  f"got {weights!r}")
    parts = LOSS_PARTS[family(model)]
    out = {}
    for k, v in weights.items():
        if k not in parts:
            raise config_error(where, f"loss_weights.{k} is not a part of the {model} loss; "
                                      f"use {', '.join(parts)}")
        out[k] = check_number(where, f"loss_weights.{k}", v, 0.0, LOSS_WEIGHT_MAX)
    return out


def check_params(raw: Mapping, where: str, model: str | None = None) -> dict:
    """Checked copy of ``raw`` (TrainConfig field → value). ``model``: the architecture the
    values are for when ``raw`` does not name one (loss weights depend on it)."""
    from glandseg.models import registry

    out: dict = {}
    for k, v in raw.items():
        if k not in PARAM_KEYS:
            raise config_error(where, f"unknown training parameter {k!r}; use "
                                      f"{', '.join(PARAM_KEYS)}")
        if k in _NUMBERS:
            integer, lo, hi, lo_open = _NUMBERS[k]
            out[k] = check_number(where, k, v, lo, hi, integer=integer, lo_open=lo_open)
        elif k in _CHOICES:
            out[k] = check_choice(where, k, v, _CHOICES[k])
        elif k == "pretrained":
            out[k] = check_bool(where, k, v)
        elif k == "model":
            names = [n for n in registry.names() if n not in registry.BUNDLED]
            out[k] = check_choice(where, k, v, names)
        elif k == "model_args":
            if not isinstance(v, Mapping):
                raise config_error(where, f"model_args must be an object, got {v!r}")
            out[k] = dict(v)
    if "loss_weights" in raw:
        out["loss_weights"] = check_loss_weights(out.get("model", model or "unet"),
                                                 raw["loss_weights"], where)
    return out


def load_params(path: str | Path) -> dict:
    """The checked training parameters of a params file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise GlandsegError(f"{path}: params file not found; pass the best.json written by "
                            "glandseg search (or a JSON object of training parameters)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GlandsegError(f"{path}: not valid JSON ({exc}); fix or regenerate the file") from exc
    if isinstance(doc, dict) and "train" in doc:
        doc = doc["train"]
    if not isinstance(doc, dict):
        raise GlandsegError(f"{path}: expected a JSON object of training parameters")
    return check_params(doc, str(path), doc.get("model") if isinstance(doc.get("model"), str)
                        else None)
