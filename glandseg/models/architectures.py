"""The architectures a model config may name: per architecture the one set of defaults of
``model_args``, ``task`` and ``preprocess`` (and tiling where it differs from
:class:`~glandseg.models.sections.Tiling`'s), the tasks it does and the check of its
``model_args`` (keys, ranges, fit with the task), run before anything is allocated.

Named architectures: ``unet``, ``unet-lite0``, ``maskrcnn``, ``maskrcnn-lite0``; bundled
trained models: ``glas-unet``, ``glas-maskrcnn``. Every architecture's default resolution
(``preprocess.mpp``) is GlaS's, 0.62005 µm/px. The networks are built by
:mod:`glandseg.models.registry`; this module imports neither torch nor numpy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from glandseg import GlandsegError
from glandseg.models.norms import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD
from glandseg.models.sections import (
    GLAS_MPP,
    POSTPROCESS,
    Tiling,
    check_bool,
    check_choice,
    check_int_list,
    check_keys,
    check_number,
    config_error,
)

#: ``check(args as given, the architecture's default args, task, where) → args``, defaults
#: filled; raises naming the file (``where``) and the key.
ArgsCheck = Callable[[Mapping, Mapping, str, str], dict]

@dataclass(frozen=True)
class ModelSpec:
    """One architecture: its name, default config sections, description, ``model_args``
    check and the tasks it does."""

    name: str
    defaults: dict
    description: str = ""
    check_args: ArgsCheck | None = None
    tasks: tuple[str, ...] = ()


_SPECS: dict[str, ModelSpec] = {}
BUNDLED = ("glas-unet", "glas-maskrcnn")
ENCODER_NAMES = ("lite0", "lite1", "lite2")  # glandseg.models.encoders.ENCODERS (torch-free)


def add(name: str, defaults: dict, description: str = "", check_args: ArgsCheck | None = None,
        tasks: tuple[str, ...] = ()) -> ModelSpec:
    """Declare architecture ``name`` (its builder is registered in
    :func:`glandseg.models.registry.register`)."""
    spec = ModelSpec(name, defaults, description, check_args, tasks or (defaults["task"],))
    _SPECS[name] = spec
    return spec


# --- model_args checks (before anything is allocated) ---------------------------------

def _out_channels(where: str, task: str, value: object) -> int:
    oc = check_number(where, "model_args.out_channels", value, 1, 3, integer=True)
    need = {"binary": 1, "contour": 3}[task]
    if oc != need:
        raise config_error(where, f"model_args.out_channels {oc} does not fit task {task!r} "
                                  "(binary needs 1 output channel, contour 3)")
    return oc


def _check_unet(raw: Mapping, defaults: Mapping, task: str, where: str) -> dict:
    check_keys(where, "model_args", raw, ("width", "out_channels", "batch_norm"))
    a = {**defaults, **raw}
    return {"width": check_number(where, "model_args.width", a["width"], 4, 256, integer=True),
            "out_channels": _out_channels(where, task, a["out_channels"]),
            "batch_norm": check_bool(where, "model_args.batch_norm", a["batch_norm"])}


def _check_unet_lite(raw: Mapping, defaults: Mapping, task: str, where: str) -> dict:
    check_keys(where, "model_args", raw, ("encoder", "out_channels", "decoder_channels"))
    a = {**defaults, **raw}
    return {"encoder": check_choice(where, "model_args.encoder", a["encoder"], ENCODER_NAMES),
            "out_channels": _out_channels(where, task, a["out_channels"]),
            "decoder_channels": check_int_list(where, "model_args.decoder_channels",
                                               a["decoder_channels"], 5, 4, 1024)}


#: torchvision ``MaskRCNN`` arguments that ``model_args`` may set: (integer?, low, high).
#: The names are :data:`glandseg.models.maskrcnn.DETECTOR_KWARGS` (a test keeps them equal).
DETECTOR_RANGES = {
    "rpn_pre_nms_top_n_train": (True, 1, 100_000), "rpn_pre_nms_top_n_test": (True, 1, 100_000),
    "rpn_post_nms_top_n_train": (True, 1, 100_000), "rpn_post_nms_top_n_test": (True, 1, 100_000),
    "rpn_batch_size_per_image": (True, 1, 100_000), "box_batch_size_per_image": (True, 1, 100_000),
    "box_positive_fraction": (False, 0.01, 1.0), "box_detections_per_img": (True, 1, 10_000),
    "box_score_thresh": (False, 0.0, 1.0), "box_nms_thresh": (False, 0.0, 1.0),
    "rpn_positive_fraction": (False, 0.01, 1.0), "rpn_fg_iou_thresh": (False, 0.05, 1.0),
    "rpn_bg_iou_thresh": (False, 0.0, 1.0), "box_fg_iou_thresh": (False, 0.05, 1.0),
    "box_bg_iou_thresh": (False, 0.0, 1.0),
}
#: Anchor and mask-head arguments of both backbones (glas-maskrcnn v3; absent = the v1/v2
#: network exactly): see :func:`glandseg.models.maskrcnn.anchor_generator`.
_HEAD_KEYS = ("anchor_sizes", "anchor_scales", "aspect_ratios", "mask_resolution")
_RESNET_KEYS = ("backbone", "pretrained_source", "weights_file", "trainable_backbone_layers",
                *_HEAD_KEYS)
_LITE_KEYS = ("backbone", "encoder", "weights_file", "fpn_channels", "box_representation",
              "mask_channels", "head_norm", "freeze_bn", *_HEAD_KEYS)


def _float_list(where: str, key: str, value: object, lo: float, hi: float) -> list[float]:
    """1 to 9 distinct numbers in ``[lo, hi]``."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= 9:
        raise config_error(where, f"{key} must be a list of 1 to 9 numbers, got {value!r}")
    out = [float(check_number(where, f"{key}[{i}]", v, lo, hi)) for i, v in enumerate(value)]
    if len(set(out)) != len(out):
        raise config_error(where, f"{key} has a value twice: {value!r}")
    return out


def _check_maskrcnn(raw: Mapping, defaults: Mapping, task: str, where: str) -> dict:
    backbone = check_choice(where, "model_args.backbone",
                            raw.get("backbone", defaults.get("backbone", "resnet50")),
                            ("resnet50", *ENCODER_NAMES))
    own = (*(_RESNET_KEYS if backbone == "resnet50" else _LITE_KEYS), *DETECTOR_RANGES)
    check_keys(where, "model_args", raw, own)
    # defaults that this backbone does not read (a name's other backbone) are dropped
    a = {**{k: v for k, v in defaults.items() if k in own}, **raw, "backbone": backbone}
    head_norm = check_choice(where, "model_args.head_norm", a.get("head_norm", "group"),
                             ("group", "none"))
    out: dict = {}
    for k, v in a.items():
        key = f"model_args.{k}"
        if k in DETECTOR_RANGES:
            integer, lo, hi = DETECTOR_RANGES[k]
            out[k] = check_number(where, key, v, lo, hi, integer=integer)
        elif k == "pretrained_source":
            out[k] = check_choice(where, key, v, ("coco", "imagenet", "none"))
        elif k == "weights_file":
            if v is not None and not isinstance(v, str):
                raise config_error(where, f"{key} must be a file path, got {v!r}")
            out[k] = v
        elif k == "trainable_backbone_layers":
            out[k] = check_number(where, key, v, 0, 5, integer=True)
        elif k == "encoder":
            out[k] = check_choice(where, key, v, (backbone,))
        elif k in ("fpn_channels", "mask_channels"):
            out[k] = check_number(where, key, v, 32, 1024, integer=True)
            if out[k] % 32 and head_norm == "group":
                raise config_error(where, f"{key} must be a multiple of 32 with head_norm "
                                          f"'group' (GroupNorm of 32 groups), got {v!r}")
        elif k == "box_representation":
            out[k] = check_number(where, key, v, 16, 4096, integer=True)
        elif k == "freeze_bn":
            out[k] = check_bool(where, key, v)
        elif k == "anchor_sizes":
            out[k] = check_int_list(where, key, v, 5, 4, 4096)
        elif k == "anchor_scales":
            out[k] = _float_list(where, key, v, 0.25, 4.0)
        elif k == "aspect_ratios":
            out[k] = _float_list(where, key, v, 0.05, 20.0)
        elif k == "mask_resolution":
            out[k] = check_number(where, key, v, 14, 112, integer=True)
            if out[k] % 2:
                raise config_error(where, f"{key} must be even (the mask head upsamples its "
                                          f"RoIAlign output x2), got {v!r}")
        else:  # backbone, head_norm: checked above
            out[k] = v
    for part, fg, bg in (("rpn", 0.7, 0.3), ("box", 0.5, 0.5)):  # torchvision's defaults
        hi, lo = out.get(f"{part}_fg_iou_thresh", fg), out.get(f"{part}_bg_iou_thresh", bg)
        if lo > hi:
            raise config_error(where, f"model_args.{part}_bg_iou_thresh {lo} is above "
                                      f"{part}_fg_iou_thresh {hi}; lower it")
    if backbone != "resnet50":
        out.setdefault("encoder", backbone)
    return out


def check_model_args(name: str, raw: Mapping, task: str, where: str) -> dict:
    """``model_args`` of architecture ``name`` as given in a config (``where``) → checked,
    with the architecture's defaults filled; ``task`` must be one the architecture does."""
    s = spec(name)
    if task not in s.tasks:
        raise config_error(where, f"task {task!r} does not fit model {name!r} (it does "
                                  f"{' or '.join(map(repr, s.tasks))})")
    defaults = copy.deepcopy(s.defaults.get("model_args", {}))
    if s.check_args is None:
        return {**defaults, **copy.deepcopy(dict(raw))}
    return s.check_args(copy.deepcopy(dict(raw)), defaults, task, where)


add("unet", {
    "model_args": {"width": 64, "out_channels": 1, "batch_norm": False},
    "task": "binary",
    "preprocess": {"mpp": GLAS_MPP, "scale": 0.5, "mean": list(IMAGENET_MEAN),
                   "std": list(IMAGENET_STD)},
}, "the study's U-Net (Ronneberger 2015): 4 levels 64→1024, sigmoid output, BCE",
    _check_unet, ("binary", "contour"))
add("unet-lite0", {
    "model_args": {"encoder": "lite0", "out_channels": 3, "decoder_channels": [128, 64, 48, 32, 16]},
    "task": "contour",
    "preprocess": {"mpp": GLAS_MPP, "scale": 0.5, "mean": list(LITE_MEAN),
                   "std": list(LITE_STD)},
}, "U-Net decoder on ImageNet EfficientNet-Lite0, interior/boundary target + watershed",
    _check_unet_lite)
add("maskrcnn", {
    "model_args": {"backbone": "resnet50", "pretrained_source": "coco", "box_detections_per_img": 256},
    "task": "instances",
    "preprocess": {"mpp": GLAS_MPP, "scale": 1.0, "mean": list(IMAGENET_MEAN),
                   "std": list(IMAGENET_STD)},
    # full resolution: a whole GlaS image (at most 775 × 522) is one tile
    "tiling": {"tile": 800, "overlap": 160, "batch_size": 1},
}, "torchvision Mask R-CNN, ResNet-50-FPN (the study's second model)",
    _check_maskrcnn)
add("maskrcnn-lite0", {
    "model_args": {"backbone": "lite0", "box_detections_per_img": 256, "fpn_channels": 128,
                   "box_representation": 512, "mask_channels": 128, "head_norm": "group",
                   "box_batch_size_per_image": 256, "anchor_sizes": [24, 48, 96, 192, 384]},
    "task": "instances",
    "preprocess": {"mpp": GLAS_MPP, "scale": 0.5, "mean": list(LITE_MEAN),
                   "std": list(LITE_STD)},
}, "Mask R-CNN on an ImageNet EfficientNet-Lite0 FPN backbone (trains offline)",
    _check_maskrcnn)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of architecture ``name`` (one-line error if unknown)."""
    if name not in _SPECS:
        raise GlandsegError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    return _SPECS[name]


def architectures() -> list[str]:
    """The architecture names (what a config's ``model`` key may say)."""
    return list(_SPECS)


def names() -> list[str]:
    """Architecture names followed by bundled model names."""
    return [*_SPECS, *BUNDLED]


def default_config(name: str) -> dict:
    """A fresh copy of the full default model config of architecture ``name`` (every key
    filled: the architecture's defaults, then tiling and the task's post-processing defaults)."""
    d = spec(name).defaults
    return {
        "model": name, "task": d["task"],
        "model_args": check_model_args(name, {}, d["task"], f"model {name}"),
        "preprocess": copy.deepcopy(d["preprocess"]),
        "tiling": Tiling(**d.get("tiling", {})).as_dict(),
        "postprocess": POSTPROCESS[d["task"]]().as_dict(),
    }
