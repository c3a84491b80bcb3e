"""Mask R-CNN models (torchvision) and their training task.

Two registered architectures share torchvision's :class:`~torchvision.models.detection.MaskRCNN`
(RPN with 3 aspect ratios 0.5/1/2, RoIAlign, box head, mask head), 2 classes (background,
gland):

- ``maskrcnn``: the study's ResNet-50-FPN (``maskrcnn_resnet50_fpn``). ``model_args``:
  ``pretrained_source`` = ``coco`` | ``imagenet`` | ``none`` and optionally ``weights_file``
  (a local ``.safetensors``, or a torchvision ``.pth`` read with ``torch.load(weights_only=True)``),
  for machines without internet: download the torchvision checkpoint elsewhere and pass
  ``--weights-file PATH``. ``pretrained_source`` then says what the file holds (``coco``: the
  COCO detector, predictors are re-initialised for 2 classes; ``imagenet``: the ResNet-50
  classifier, loaded into the backbone).
- ``maskrcnn-lite0``: the same detector on the ImageNet EfficientNet-Lite0 encoder (offline
  weights) with a torchvision FPN on its stride 8/16/32 features plus P6/P7 (strides 64/128),
  one anchor size per level (24, 48, 96, 192, 384 px, for glands of ~20-400 px at scale 0.5),
  GroupNorm in the FPN and the (128-channel) mask head, a 512-wide two-layer box head:
  about 8 M parameters, 16 MB in fp16.

**glas-maskrcnn v3 options** (``model_args`` of both; absent = the network above exactly,
so the bundled v1/v2 configs build the same network): ``mask_resolution`` (the predicted
mask side, default 28: RoIAlign 14 upsampled x2; 56 = RoIAlign 28), ``anchor_sizes`` (one
per FPN level), ``anchor_scales`` (multipliers per level, e.g. 3 per octave) and
``aspect_ratios`` (height / width) of the RPN's anchors (:func:`anchor_generator`; the
gland-fit values and the GlaS statistics behind them are in
``results/maskrcnn_v3/gland_sizes.json``), and RoI sampling / matching
(``rpn_``/``box_`` ``batch_size_per_image``, ``positive_fraction``, ``fg_iou_thresh``,
``bg_iou_thresh``; :data:`DETECTOR_KWARGS`).

**Normalisation and resizing.** Images reach these models as float ``(3, H, W)`` in [0, 1],
already at the model's working scale (the Trainer's dataset and the Predictor both rescale
by ``preprocess.scale``). The model's own ``GeneralizedRCNNTransform`` normalises them with
``preprocess.mean/std`` and pads to a multiple of 32; it never resizes (its ``resize`` is
a no-op here). So :meth:`InstanceTask.loss` and :func:`glandseg.infer.instances.predict_instances`
pass raw [0, 1] images (unlike :class:`~glandseg.train.tasks.DenseTask`, which normalises
itself); the Trainer's ``mean``/``std`` are ignored for this task.

The architecture depends only on the config, never on ``pretrained`` (``pretrained`` only
decides whether weights are loaded), so a checkpoint always fits a model rebuilt from its config.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from glandseg import GlandsegError
from glandseg.data.transforms import masks_to_boxes

log = logging.getLogger(__name__)

NUM_CLASSES = 2  # background, gland
LITE_ANCHOR_SIZES = (24, 48, 96, 192, 384)
RESNET_ANCHOR_SIZES = (32, 64, 128, 256, 512)  # torchvision's maskrcnn_resnet50_fpn
ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: MaskRCNN keyword arguments that ``model_args`` may override.
DETECTOR_KWARGS = (
    "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
    "box_positive_fraction", "box_detections_per_img", "box_score_thresh", "box_nms_thresh",
    "rpn_positive_fraction", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "box_fg_iou_thresh",
    "box_bg_iou_thresh",
)
#: Predicted mask side of torchvision's mask head (RoIAlign output 14, upsampled x2).
MASK_RESOLUTION = 28
DETECTOR_DEFAULTS = {
    "rpn_pre_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_train": 1000, "rpn_post_nms_top_n_test": 500,
    "rpn_batch_size_per_image": 256, "box_batch_size_per_image": 512,
    "box_detections_per_img": 256, "box_score_thresh": 0.05,
}
_PROBE_TIMEOUT_S = 5.0
_DOWNLOAD_TIMEOUT_S = 60.0


class _NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform without the resize: normalise with mean/std, pad to 32."""

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(Normalize(mean={self.image_mean}, "
                f"std={self.image_std}), no resize, pad to {self.size_divisible})")


def _detector_kwargs(cfg: dict) -> dict[str, Any]:
    a = cfg.get("model_args", {})
    kw = dict(DETECTOR_DEFAULTS)
    kw.update({k: a[k] for k in DETECTOR_KWARGS if k in a})
    return kw


def anchor_generator(args: dict, default_sizes: tuple[int, ...]) -> AnchorGenerator:
    """The RPN's anchors from ``model_args``: ``anchor_sizes`` (one base size per FPN
    level, px at the working scale; default ``default_sizes``), ``anchor_scales``
    (multipliers of each level's size, default ``[1.0]``; e.g. 3 per octave
    ``[1, 2^(1/3), 2^(2/3)]``) and ``aspect_ratios`` (height / width, default
    ``[0.5, 1, 2]``). Anchors per location = scales x ratios. The defaults give the
    network of the v1/v2 models exactly."""
    base = [int(s) for s in args.get("anchor_sizes", default_sizes)]
    scales = [float(k) for k in args.get("anchor_scales", (1.0,))]
    ratios = tuple(float(r) for r in args.get("aspect_ratios", ASPECT_RATIOS))
    sizes = tuple(tuple(s * k if k != 1.0 else s for k in scales) for s in base)
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


def mask_pool_size(args: dict) -> int:
    """RoIAlign output side of the mask branch: half of ``model_args.mask_resolution`` (the
    predicted mask side; default 28, torchvision's: RoIAlign 14, the head upsamples x2).
    ``mask_resolution`` 56 gives a mask head twice as fine (4x its compute)."""
    return int(args.get("mask_resolution", MASK_RESOLUTION)) // 2


def _set_transform(model: MaskRCNN, cfg: dict) -> None:
    pre = cfg.get("preprocess", {})
    tile = int(cfg.get("tiling", {}).get("tile", 512))
    model.transform = _NoResizeTransform(
        min_size=tile, max_size=tile, image_mean=list(pre.get("mean", (0.485, 0.456, 0.406))),
        image_std=list(pre.get("std", (0.229, 0.224, 0.225))), size_divisible=32)


# --- weights -------------------------------------------------------------------------------

def _offline_error(what: str, url: str, exc: BaseException | None) -> GlandsegError:
    why = f" ({exc})" if exc else ""
    return GlandsegError(
        f"could not download the {what} weights from {url}{why}. On a machine with internet, "
        f"download that file, copy it here and pass --weights-file PATH (a .pth or .safetensors), "
        "or train maskrcnn-lite0, whose ImageNet weights work offline (or --pretrained none)")


def _fetch_state_dict(weights: Any, what: str) -> dict[str, torch.Tensor]:
    """``weights.get_state_dict()`` of a torchvision weights enum, failing at once offline.

    A cached checkpoint is used without the network. Otherwise the host is probed with a
    short socket timeout first, and the download runs under a socket timeout, so a machine
    without internet gets a :class:`GlandsegError` within seconds instead of a hang.
    """
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not cached.is_file():
        host = urlparse(url).hostname or ""
        try:
            socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
        except OSError as exc:
            raise _offline_error(what, url, exc) from exc
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise _offline_error(what, url, exc) from exc
    finally:
        socket.setdefaulttimeout(old)


def _read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a torchvision ``.pth`` (tensors only)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise GlandsegError(f"--weights-file {p}: file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GlandsegError(f"--weights-file {p}: cannot read it as a .safetensors or "
                            f"tensors-only .pth file ({exc})") from exc
    for key in ("model", "state_dict"):  # common checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise GlandsegError(f"--weights-file {p}: not a state dict of tensors")
    return sd


def _load_matching(model: nn.Module, sd: dict[str, torch.Tensor], source: str,
                   required_prefix: str) -> None:
    """Load the tensors of ``sd`` whose names and shapes fit ``model``; the class-specific
    predictor layers of a COCO detector are left freshly initialised. Raises when the
    tensors under ``required_prefix`` (the backbone) do not all fit."""
    own = model.state_dict()
    fit = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    need = [k for k in own if k.startswith(required_prefix) and not k.endswith("num_batches_tracked")]
    missing = [k for k in need if k not in fit]
    if missing:
        raise GlandsegError(
            f"{source}: the weights do not fit this model ({len(missing)} of {len(need)} "
            f"backbone tensors missing or of another shape, e.g. {missing[0]})")
    skipped = sorted(set(sd) - set(fit))
    if skipped:
        log.info("%s: %d tensors not used (e.g. %s)", source, len(skipped), skipped[:3])
    model.load_state_dict(fit, strict=False)


# --- builders ------------------------------------------------------------------------------

def _build_resnet50(cfg: dict, pretrained: bool) -> MaskRCNN:
    from torchvision.models import ResNet50_Weights, resnet50
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
    from torchvision.models.detection._utils import overwrite_eps

    a = cfg.get("model_args", {})
    source = str(a.get("pretrained_source", "coco")).lower()
    if source not in ("coco", "imagenet", "none"):
        raise GlandsegError(f"pretrained_source {source!r}: use coco, imagenet or none")
    weights_file = a.get("weights_file")
    if weights_file and source == "none":
        raise GlandsegError("--weights-file needs --pretrained coco or imagenet (what the file holds)")
    # As torchvision: frozen BatchNorm and 3 trainable ResNet stages when starting from
    # pretrained weights, ordinary BatchNorm and all 5 stages from scratch.
    is_trained = source != "none"
    norm = misc_nn_ops.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    trainable = int(a.get("trainable_backbone_layers", 3 if is_trained else 5))
    backbone = resnet50(weights=None, norm_layer=norm)
    backbone = _resnet_fpn_extractor(backbone, trainable)
    v3: dict[str, Any] = {}  # torchvision's own anchors and mask pool unless model_args say
    if any(k in a for k in ("anchor_sizes", "anchor_scales", "aspect_ratios")):
        gen = anchor_generator(a, RESNET_ANCHOR_SIZES)
        v3["rpn_anchor_generator"] = gen
        v3["rpn_head"] = RPNHead(backbone.out_channels, gen.num_anchors_per_location()[0])
    if mask_pool_size(a) != MASK_RESOLUTION // 2:
        v3["mask_roi_pool"] = MultiScaleRoIAlign(["0", "1", "2", "3"], mask_pool_size(a), 2)
    model = MaskRCNN(backbone, num_classes=NUM_CLASSES, **v3, **_detector_kwargs(cfg))
    if source == "coco":
        overwrite_eps(model, 0.0)  # torchvision's COCO_V1 weights were trained with eps 0
    if pretrained and is_trained:
        if weights_file:
            sd = _read_weights_file(weights_file)
            where = f"--weights-file {weights_file}"
        elif source == "coco":
            sd = _fetch_state_dict(MaskRCNN_ResNet50_FPN_Weights.COCO_V1, "COCO Mask R-CNN")
            where = "COCO Mask R-CNN weights"
        else:
            sd = _fetch_state_dict(ResNet50_Weights.IMAGENET1K_V1, "ImageNet ResNet-50")
            where = "ImageNet ResNet-50 weights"
        if not any(k.startswith("backbone.") for k in sd):  # a ResNet-50 classifier
            sd = {f"backbone.body.{k}": v for k, v in sd.items()}
        _load_matching(model, sd, where, "backbone.body.")
        log.info("maskrcnn initialised from %s", where)
    _set_transform(model, cfg)
    return model


class LiteFPNBackbone(nn.Module):
    """EfficientNet-Lite0 features at strides 8/16/32 → FPN with P6/P7 (strides 8..128).

    ``forward``: float ``(B, 3, H, W)`` normalised → ``OrderedDict`` ``'0','1','2','p6','p7'``
    of ``(B, out_channels, H/s, W/s)``. With ``freeze_bn`` the encoder's BatchNorm layers stay
    in eval mode during training (batch statistics of 2 small crops are too noisy);
    the state dict is the same either way.
    """

    def __init__(self, encoder: nn.Module, out_channels: int = 128, freeze_bn: bool = True,
                 norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        self.body = encoder
        chans = list(encoder.feature_info.channels())[-3:]
        self.fpn = FeaturePyramidNetwork(chans, out_channels, norm_layer=norm_layer,
                                         extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels
        self.freeze_bn = freeze_bn

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)[-3:]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))

    def train(self, mode: bool = True) -> LiteFPNBackbone:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def _build_lite(cfg: dict, pretrained: bool) -> MaskRCNN:
    from glandseg.models.encoders import create_encoder

    a = cfg.get("model_args", {})
    enc = create_encoder(a.get("encoder", "lite0"), pretrained=pretrained)
    ch = int(a.get("fpn_channels", 128))
    # EfficientNet features are large (std ~10 at stride 8): GroupNorm in the FPN and the
    # mask head keeps the freshly initialised heads stable (as in Mask R-CNN v2 / GN papers).
    norm = partial(nn.GroupNorm, 32) if a.get("head_norm", "group") == "group" else None
    backbone = LiteFPNBackbone(enc, ch, freeze_bn=bool(a.get("freeze_bn", pretrained)),
                               norm_layer=norm)
    anchors = anchor_generator(a, LITE_ANCHOR_SIZES)
    rep = int(a.get("box_representation", 512))
    mask_ch = int(a.get("mask_channels", 128))
    levels = ["0", "1", "2"]
    model = MaskRCNN(
        backbone, num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(ch, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
        box_head=TwoMLPHead(ch * 7 * 7, rep), box_predictor=FastRCNNPredictor(rep, NUM_CLASSES),
        mask_roi_pool=MultiScaleRoIAlign(levels, mask_pool_size(a), 2),
        mask_head=MaskRCNNHeads(ch, (mask_ch,) * 4, 1, norm_layer=norm),
        mask_predictor=MaskRCNNPredictor(mask_ch, mask_ch, NUM_CLASSES),
        **_detector_kwargs(cfg),
    )
    if pretrained and a.get("weights_file"):
        sd = _read_weights_file(a["weights_file"])
        _load_matching(model, sd, f"--weights-file {a['weights_file']}", "backbone.body.")
    _set_transform(model, cfg)
    return model


def build(cfg: dict, pretrained: bool = True) -> nn.Module:
    """The Mask R-CNN of ``cfg`` (``model_args.backbone`` ``resnet50`` or ``lite0``).

    Input (train and eval): a list of float ``(3, H, W)`` images in [0, 1] at the working
    scale (normalised inside, never resized); training also takes targets
    ``[{"boxes": float (N, 4) xyxy, "labels": int64 (N,), "masks": uint8 (N, H, W)}]``
    and returns torchvision's loss dict; eval returns
    ``[{"boxes", "labels", "scores", "masks": float (N, 1, H, W)}]``.
    ``pretrained``: load the initial weights named by the config (offline-safe for lite0).
    """
    backbone = cfg.get("model_args", {}).get("backbone", "resnet50")
    if backbone == "resnet50":
        model = _build_resnet50(cfg, pretrained)
    elif backbone in ("lite0", "lite1", "lite2"):
        cfg.setdefault("model_args", {}).setdefault("encoder", backbone)
        model = _build_lite(cfg, pretrained)
    else:
        raise GlandsegError(f"unknown Mask R-CNN backbone {backbone!r}; use resnet50 or lite0")
    model.stride = 32
    return model


# --- training task -------------------------------------------------------------------------

class InstanceTask:
    """Targets, collate and loss of Mask R-CNN training.

    Items carry ``image`` float ``(3, H, W)`` in [0, 1] (working scale) and ``labels`` int64
    ``(H, W)`` (0 = background); :meth:`target_fn` adds ``boxes`` float ``(N, 4)`` xyxy
    (x2/y2 exclusive), ``masks`` uint8 ``(N, H, W)`` and ``classes`` int64 ``(N,)`` (all 1),
    skipping degenerate glands (box under 2 px). A crop without glands has ``N = 0``
    (torchvision then trains on background only).
    """

    def __init__(self, cfg: dict | None = None) -> None:
        self.cfg = cfg or {}
        self.last_losses: dict[str, float] = {}

    @staticmethod
    def target_fn(labels: torch.Tensor) -> dict[str, torch.Tensor]:
        boxes, masks, _ = masks_to_boxes(labels)
        return {"boxes": boxes.float().reshape(-1, 4), "masks": masks.to(torch.uint8),
                "classes": torch.ones(len(boxes), dtype=torch.int64)}

    @staticmethod
    def collate(items: list[dict]) -> dict[str, list]:
        """→ ``{"images": [float (3, H, W)], "targets": [{"boxes", "labels", "masks"}]}``."""
        return {
            "images": [it["image"] for it in items],
            "targets": [{"boxes": it["boxes"], "labels": it["classes"], "masks": it["masks"]}
                        for it in items],
        }

    def loss(self, model: nn.Module, batch: dict, mean: torch.Tensor | None = None,
             std: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of torchvision's losses (model in train mode). ``mean``/``std`` are unused:
        the model normalises its [0, 1] input itself. The parts, as floats of the last
        call, are in :attr:`last_losses` for logging. ``cfg["train"]["loss_weights"]``
        (``{"mask": 2.0, ...}``, parts without the ``loss_`` prefix) weights the parts."""
        parts = model(batch["images"], batch["targets"])
        self.last_losses = {k: float(v.detach()) for k, v in parts.items()}
        w = (self.cfg.get("train") or {}).get("loss_weights") or {}
        return sum(float(w.get(k.removeprefix("loss_"), 1.0)) * v for k, v in parts.items())
