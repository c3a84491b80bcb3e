"""glas-maskrcnn v3 options of the Mask R-CNN builders: a finer mask head
(``mask_resolution``), anchors fit to glands (``anchor_sizes``/``anchor_scales``/
``aspect_ratios``), RoI sampling (``*_positive_fraction``, ``*_batch_size_per_image``,
IoU thresholds); their defaults keep the bundled v2 network exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glandseg import GlandsegError
from glandseg.models import maskrcnn, registry
from glandseg.models.store import load_weights

ROOT = Path(__file__).resolve().parents[2]


def _cfg(name: str = "maskrcnn-lite0", **model_args) -> dict:
    cfg = registry.default_config(name)
    cfg["model_args"].update(model_args)
    return cfg


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    torch.manual_seed(0)
    img = torch.rand(3, 128, 128)
    lab = torch.zeros(128, 128, dtype=torch.int64)
    lab[10:50, 10:40] = 1  # tall
    lab[70:100, 20:110] = 2  # wide
    t = maskrcnn.InstanceTask.target_fn(lab)
    return [img], [{"boxes": t["boxes"], "labels": t["classes"], "masks": t["masks"]}]


def _train_losses(model) -> dict:
    model.train()
    images, targets = _batch()
    return model(images, targets)


def test_defaults_are_the_v2_network() -> None:
    """No v3 key: the anchors, RPN head and mask pool of the bundled glas-maskrcnn, whose
    weights load strictly (every key and shape)."""
    cfg = json.loads((ROOT / "glandseg/weights/glas-maskrcnn.json").read_text())
    assert not set(cfg["model_args"]) & {"mask_resolution", "aspect_ratios", "anchor_scales"}
    model = registry.build_model(cfg, pretrained=False)
    gen = model.rpn.anchor_generator
    assert gen.sizes == ((24,), (48,), (96,), (192,), (384,))
    assert gen.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert model.rpn.head.cls_logits.out_channels == 3
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert model.rpn.fg_bg_sampler.positive_fraction == 0.5
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 256
    load_weights(model, ROOT / "glandseg/weights/glas-maskrcnn.safetensors")


def test_default_args_written_out_build_the_same_network() -> None:
    """The v3 keys at their default values give the same state dict and the same output."""
    torch.manual_seed(1)
    a = registry.build_model(_cfg(), pretrained=False).eval()
    torch.manual_seed(1)
    b = registry.build_model(_cfg(mask_resolution=28, aspect_ratios=[0.5, 1, 2],
                                  anchor_scales=[1.0], rpn_positive_fraction=0.5,
                                  rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
                                  box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5),
                             pretrained=False).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(3, 96, 128)
    with torch.no_grad():
        oa, ob = a([x])[0], b([x])[0]
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k


def test_finer_mask_head_trains_and_predicts_56() -> None:
    model = registry.build_model(_cfg(mask_resolution=56), pretrained=False)
    assert model.roi_heads.mask_roi_pool.output_size == (28, 28)
    feats = torch.rand(2, 128, 28, 28)
    logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(feats))
    assert logits.shape == (2, maskrcnn.NUM_CLASSES, 56, 56)
    losses = _train_losses(model)
    assert torch.isfinite(losses["loss_mask"])
    losses["loss_mask"].backward()
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 128)])[0]
    assert out["masks"].shape[-2:] == (96, 128)


def test_gland_anchors_scales_and_ratios() -> None:
    """3 scales x 5 ratios = 15 anchors per location; the RPN head predicts for each."""
    v3 = json.loads((ROOT / "results/maskrcnn_v3/gland_sizes.json").read_text())["anchors"]["v3"]
    model = registry.build_model(_cfg(anchor_sizes=v3["anchor_sizes"],
                                      anchor_scales=v3["anchor_scales"],
                                      aspect_ratios=v3["aspect_ratios"]), pretrained=False)
    gen = model.rpn.anchor_generator
    assert gen.num_anchors_per_location() == [15] * 5
    assert model.rpn.head.cls_logits.out_channels == 15
    assert model.rpn.head.bbox_pred.out_channels == 60
    assert gen.sizes[1] == pytest.approx((64, 64 * 2 ** (1 / 3), 64 * 2 ** (2 / 3)), rel=1e-3)
    anchors = gen.cell_anchors[4]  # 512 px, centred at 0 (rounded to whole px)
    h, w = anchors[:, 3] - anchors[:, 1], anchors[:, 2] - anchors[:, 0]
    ratios = sorted({round(float(r), 1) for r in h / w})
    assert ratios == [0.4, 0.6, 1.0, 1.6, 2.5]
    losses = _train_losses(model)
    assert all(torch.isfinite(v) for v in losses.values())


def test_roi_sampling_args_reach_torchvision() -> None:
    model = registry.build_model(_cfg(rpn_positive_fraction=0.25, rpn_batch_size_per_image=64,
                                      box_positive_fraction=0.5, box_batch_size_per_image=128,
                                      box_fg_iou_thresh=0.6, box_bg_iou_thresh=0.4,
                                      rpn_fg_iou_thresh=0.6, rpn_bg_iou_thresh=0.2),
                                 pretrained=False)
    assert model.rpn.fg_bg_sampler.positive_fraction == 0.25
    assert model.rpn.fg_bg_sampler.batch_size_per_image == 64
    assert model.roi_heads.fg_bg_sampler.positive_fraction == 0.5
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 128
    assert (model.roi_heads.proposal_matcher.high_threshold,
            model.roi_heads.proposal_matcher.low_threshold) == (0.6, 0.4)
    assert (model.rpn.proposal_matcher.high_threshold,
            model.rpn.proposal_matcher.low_threshold) == (0.6, 0.2)
    assert torch.isfinite(sum(_train_losses(model).values()))


def test_resnet50_takes_the_v3_head_args() -> None:
    default = registry.build_model(_cfg("maskrcnn", pretrained_source="none"), pretrained=False)
    assert default.rpn.anchor_generator.sizes == tuple((s,) for s in maskrcnn.RESNET_ANCHOR_SIZES)
    assert default.roi_heads.mask_roi_pool.output_size == (14, 14)
    model = registry.build_model(_cfg("maskrcnn", pretrained_source="none", mask_resolution=56,
                                      aspect_ratios=[0.4, 1.0, 2.5], anchor_scales=[1.0, 1.5]),
                                 pretrained=False)
    assert model.roi_heads.mask_roi_pool.output_size == (28, 28)
    assert model.rpn.head.cls_logits.out_channels == 6
    assert model.rpn.anchor_generator.sizes[0] == (32, 48.0)


@pytest.mark.parametrize("args,words", [
    ({"mask_resolution": 57}, "mask_resolution must be even"),
    ({"mask_resolution": 8}, "mask_resolution"),
    ({"aspect_ratios": [0.5, 0.5]}, "aspect_ratios has a value twice"),
    ({"aspect_ratios": []}, "aspect_ratios must be a list of 1 to 9 numbers"),
    ({"anchor_scales": [1.0, 9.0]}, r"anchor_scales\[1\]"),
    ({"box_bg_iou_thresh": 0.6}, "box_bg_iou_thresh 0.6 is above box_fg_iou_thresh 0.5"),
    ({"rpn_positive_fraction": 0}, "rpn_positive_fraction"),
    ({"mask_resoluton": 56}, "unknown key 'model_args.mask_resoluton'"),
])
def test_bad_v3_args_are_one_line_errors(args: dict, words: str) -> None:
    with pytest.raises(GlandsegError, match=words) as err:
        registry.build_model(_cfg(**args), pretrained=False, source="run/config.json")
    assert "\n" not in str(err.value) and "run/config.json" in str(err.value)


def test_v3_preset_model_args_fit_the_registry_and_the_gland_statistics() -> None:
    from glandseg.train.presets import preset_settings, preset_stages

    s = preset_settings("glas-maskrcnn-v3")
    v3 = json.loads((ROOT / "results/maskrcnn_v3/gland_sizes.json").read_text())["anchors"]["v3"]
    a = registry.check_model_args("maskrcnn-lite0", s["model_args"], "instances", "preset")
    assert a["mask_resolution"] == 56 and a["aspect_ratios"] == v3["aspect_ratios"]
    assert a["anchor_sizes"] == v3["anchor_sizes"]
    assert a["anchor_scales"] == pytest.approx(v3["anchor_scales"], abs=1e-4)
    assert (s["model"], s["scale"], s["crop"]) == ("maskrcnn-lite0", 1.0, 512)
    long, baby = preset_stages("glas-maskrcnn-v3", "maskrcnn-lite0")
    assert baby["lr"] < long["lr"] / 10 and baby["schedule"] == "constant"


def test_cli_v3_preset_merges_model_args() -> None:
    """`train --preset glas-maskrcnn-v3`: the preset's model_args, the command line's keys
    winning; a bad --model-args JSON is the usual one-line error."""
    import argparse

    from glandseg import GlandsegError
    from glandseg.cli import train_cmd
    from glandseg.train.config import build_train_config

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--preset", "glas-maskrcnn-v3", "--out", "x",
                              "--model-args", '{"mask_resolution": 28}'])
    tc = build_train_config(train_cmd.given_options(args))
    got = tc.model_args
    assert tc.model == "maskrcnn-lite0" and got["mask_resolution"] == 28
    assert got["aspect_ratios"] == [0.4, 0.63, 1.0, 1.6, 2.5]
    args = parser.parse_args(["train", "--preset", "glas-maskrcnn-v3", "--out", "x",
                              "--model-args", "{bad"])
    with pytest.raises(GlandsegError, match="--model-args is not valid JSON"):
        train_cmd.given_options(args)
