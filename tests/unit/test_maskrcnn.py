"""Mask R-CNN builders (lite0 and ResNet-50), offline weight handling and InstanceTask."""

from __future__ import annotations

import logging
import socket
import time

import pytest
import torch

from glandseg import GlandsegError
from glandseg.models import maskrcnn, registry

log = logging.getLogger(__name__)


def _cfg(name: str, **model_args) -> dict:
    cfg = registry.default_config(name)
    cfg["model_args"].update(model_args)
    return cfg


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No cached torchvision checkpoints and no network, whatever this machine has."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)


def _labels(h: int = 160, w: int = 160) -> torch.Tensor:
    lab = torch.zeros(h, w, dtype=torch.int64)
    lab[10:50, 10:60] = 1
    lab[70:140, 40:100] = 2
    lab[20:60, 110:150] = 3
    lab[150:152, 5:40] = 4  # 2 px high: kept (boxes of at least 2 px)
    lab[100:130, 150] = 5  # 1 px wide: degenerate, skipped
    return lab


def test_lite0_builds_without_resize_and_predicts():
    cfg = _cfg("maskrcnn-lite0")
    model = registry.build_model(cfg, pretrained=False).eval()
    assert model.stride == 32
    assert model.roi_heads.detections_per_img == 256
    assert model.rpn.anchor_generator.sizes == tuple((s,) for s in maskrcnn.LITE_ANCHOR_SIZES)
    assert model.transform.image_mean == cfg["preprocess"]["mean"]
    x = torch.rand(3, 100, 130)
    with torch.no_grad():
        out = model([x])[0]
    assert out["masks"].shape[-2:] == (100, 130)  # not resized, padding removed
    assert out["boxes"].shape[1] == 4 and len(out["scores"]) <= 256


def test_lite0_size_and_architecture_independent_of_pretrained():
    cfg = _cfg("maskrcnn-lite0")
    m0 = registry.build_model(cfg, pretrained=False)
    m1 = registry.build_model(cfg, pretrained=True)  # offline ImageNet encoder weights
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    assert {k: v.shape for k, v in sd0.items()} == {k: v.shape for k, v in sd1.items()}
    n = sum(v.numel() for v in sd0.values() if v.is_floating_point())
    assert n * 2 <= 40e6  # ≤ 40 MB in fp16


def test_lite0_weights_file_safetensors(tmp_path):
    from safetensors.torch import save_file

    cfg = _cfg("maskrcnn-lite0")
    src = registry.build_model(cfg, pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    cfg["model_args"]["weights_file"] = str(path)
    dst = registry.build_model(cfg, pretrained=True)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_resnet50_builds_untrained():
    model = registry.build_model(_cfg("maskrcnn"), pretrained=False).eval()
    assert model.stride == 32
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2
    assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])[0]
    assert out["masks"].shape[-2:] == (128, 128)


def test_resnet50_offline_fails_fast(offline):
    for source in ("coco", "imagenet"):
        t = time.time()
        with pytest.raises(GlandsegError, match="--weights-file"):
            registry.build_model(_cfg("maskrcnn", pretrained_source=source), pretrained=True)
        assert time.time() - t < 15


def test_resnet50_download_error_is_caught(monkeypatch, tmp_path):
    import urllib.error

    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    class Conn:
        def close(self) -> None:
            pass

    def fail(self, *args, **kwargs):
        raise urllib.error.URLError("connection reset (test)")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Conn())
    monkeypatch.setattr(MaskRCNN_ResNet50_FPN_Weights, "get_state_dict", fail)
    with pytest.raises(GlandsegError, match="--weights-file"):
        registry.build_model(_cfg("maskrcnn", pretrained_source="coco"), pretrained=True)


def test_resnet50_weights_file_imagenet_pth(tmp_path, offline):
    from torchvision.models import resnet50

    clf = resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(clf.state_dict(), path)
    cfg = _cfg("maskrcnn", pretrained_source="imagenet", weights_file=str(path))
    model = registry.build_model(cfg, pretrained=True)
    got = model.backbone.body.state_dict()
    for k in ("conv1.weight", "layer4.2.conv3.weight", "layer1.0.bn1.running_var"):
        assert torch.equal(got[k], clf.state_dict()[k])


def test_weights_file_errors(tmp_path):
    cfg = _cfg("maskrcnn-lite0", weights_file=str(tmp_path / "missing.safetensors"))
    with pytest.raises(GlandsegError, match="not found"):
        registry.build_model(cfg, pretrained=True)
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(3)}, bad)
    cfg["model_args"]["weights_file"] = str(bad)
    with pytest.raises(GlandsegError, match="do not fit"):
        registry.build_model(cfg, pretrained=True)


def test_targets_skip_degenerate_and_handle_empty():
    task = maskrcnn.InstanceTask(registry.default_config("maskrcnn-lite0"))
    t = task.target_fn(_labels())
    assert t["boxes"].shape == (4, 4) and t["boxes"].dtype == torch.float32
    assert t["masks"].shape == (4, 160, 160) and t["masks"].dtype == torch.uint8
    assert t["classes"].tolist() == [1, 1, 1, 1]
    assert t["boxes"][0].tolist() == [10, 10, 60, 50]  # xyxy, x2/y2 exclusive
    e = task.target_fn(torch.zeros(64, 80, dtype=torch.int64))
    assert e["boxes"].shape == (0, 4) and e["masks"].shape == (0, 64, 80)
    assert e["classes"].shape == (0,)


def test_instance_task_one_training_step():
    torch.manual_seed(0)
    cfg = registry.default_config("maskrcnn-lite0")
    model = registry.build_model(cfg, pretrained=False).train()
    task = maskrcnn.InstanceTask(cfg)
    items = []
    for lab in (_labels(), torch.zeros(160, 160, dtype=torch.int64)):  # one crop without glands
        items.append({"image": torch.rand(3, 160, 160), "labels": lab, **task.target_fn(lab)})
    batch = task.collate(items)
    assert len(batch["images"]) == 2 and set(batch["targets"][0]) == {"boxes", "labels", "masks"}
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, weight_decay=5e-4)
    loss = task.loss(model, batch, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
            "loss_rpn_box_reg"} <= set(task.last_losses)
    opt.zero_grad()
    loss.backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    opt.step()
