"""Training on QuPath GeoJSON corrections: discovery, the dataset's ignore mask, the loss
skipping ignored pixels, data check, small-set fine-tuning defaults, --freeze-encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glandseg import GlandsegError
from glandseg.data.check import check_folder
from glandseg.data.dataset import GlasDataset, validation_item
from glandseg.data.discover import Sample, discover
from glandseg.report.outputs import to_geojson
from glandseg.train import checkpoint as ckpt
from glandseg.train.finetune import SMALL_SET, apply_small_set, freeze_encoder
from glandseg.train.loop import TrainConfig
from glandseg.train.run import train
from glandseg.train.tasks import DenseTask
from tests.conftest import synth_pair

pytestmark = pytest.mark.usefixtures("one_thread")


def region(x0, y0, x1, y1, cls="Region*"):
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": cls}}}


def make_corrections(root: Path, n: int, size=(64, 64), extra=None) -> Path:
    """``n`` images ``img_K.png`` with their glands as QuPath GeoJSON ``img_K.geojson``
    (as glandseg writes it); ``extra``: ``{K: [features]}`` appended to a file."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        img, lab = synth_pair(*size, n_glands=3, seed=k)
        Image.fromarray(img).save(root / f"img_{k}.png")
        coll = to_geojson(lab.astype(np.int32), image_name=f"img_{k}")
        coll["features"] += (extra or {}).get(k, [])
        (root / f"img_{k}.geojson").write_text(json.dumps(coll))
    return root


def test_discover_geojson_folder_and_mixed(tmp_path):
    root = make_corrections(tmp_path / "c", 2)
    img, lab = synth_pair(40, 48, seed=5)
    Image.fromarray(img).save(root / "other.png")
    Image.fromarray(lab).save(root / "other_anno.png")
    Image.fromarray(img).save(root / "uncorrected.png")
    s = {x.name: x for x in discover(root)}
    assert s["img_0"].anno.name == "img_0.geojson" and s["img_0"].split == "other"
    assert s["other"].anno.name == "other_anno.png" and s["uncorrected"].anno is None
    (root / "other.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(GlandsegError, match="other is annotated twice"):
        discover(root)


def test_dataset_ignore_mask_and_validation_crop(tmp_path):
    # image 0: a Region over the left half; image 1: an Ignore polygon over the top rows
    root = make_corrections(tmp_path / "c", 2, extra={0: [region(0, 0, 32, 64)],
                                                      1: [region(0, 0, 64, 10, "Ignore*")]})
    samples = discover(root)
    ds = GlasDataset(samples, transform=None)
    a, b = ds[0], ds[1]
    assert ds.with_valid and a["valid"].dtype == torch.float32
    assert a["valid"][:, :32].eq(1).all() and a["valid"][:, 32:].eq(0).all()
    assert b["valid"][:10].eq(0).all() and b["valid"][10:].eq(1).all()
    _, lab = synth_pair(64, 64, n_glands=3, seed=0)
    np.testing.assert_array_equal(a["labels"].numpy(), lab)  # labels clean of the flag
    # through the augmentation (rotation, elastic, crop) the flag survives exactly
    from glandseg.data.transforms import AugmentConfig, train_transform

    torch.manual_seed(0)
    aug = GlasDataset(samples, train_transform(AugmentConfig(crop=48)), repeats=8)
    for k in range(len(aug)):
        it = aug[k]
        assert it["labels"].max() <= 3 and set(it["valid"].unique().tolist()) <= {0.0, 1.0}
    name, image, truth = validation_item(samples[0])
    assert image.shape[:2] == truth.shape == (64, 32)  # cut to the Region
    # ordinary label images: no valid key
    Image.fromarray(lab).save(tmp_path / "x_anno.png")
    plain = GlasDataset([Sample("x", samples[0].image, tmp_path / "x_anno.png", "other")])
    assert not plain.with_valid and "valid" not in plain[0]


def test_loss_ignores_invalid_pixels():
    task = DenseTask("contour", weight_map=False)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16))
    valid = torch.ones(2, 16, 16)
    valid[:, :, 8:] = 0
    base = task.supervised(logits, {"target": target, "valid": valid})
    changed = logits.clone()
    changed[..., 8:] = torch.randn(2, 3, 16, 8) * 5
    t2 = target.clone()
    t2[..., 8:] = 2
    assert torch.allclose(base, task.supervised(changed, {"target": t2, "valid": valid}))
    # all valid == no mask
    full = task.supervised(logits, {"target": target})
    assert torch.allclose(full, task.supervised(logits, {"target": target,
                                                         "valid": torch.ones(2, 16, 16)}))


def test_data_check_reports_geojson(tmp_path):
    bad = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[100, 100], [120, 100], [120, 120], [100, 100]]]}, "properties": {}}
    root = make_corrections(tmp_path / "c", 3, extra={0: [region(0, 0, 32, 64)], 1: [bad]})
    Image.fromarray(synth_pair(40, 40)[0]).save(root / "todo.png")
    (root / "img_2.geojson").write_text("")
    rep = check_folder(root)
    text = str(rep)
    assert "QuPath GeoJSON annotations: 2 (Region* polygons: 1" in text
    assert any("img_1.geojson" in str(p.path) and "feature 4 lies outside" in p.message
               for p in rep.warnings)
    assert any(p.path.name == "img_2.geojson" and "empty file" in p.message for p in rep.errors)
    assert any(p.path.name == "todo.png" and "left out of training" in p.message
               for p in rep.warnings)
    assert rep.to_dict()["splits"]["other"]["regions"] == 1


def test_small_set_defaults():
    d = {"lr": 1e-3, "epochs": 100, "repeats": 2, "val_fraction": 0.2}

    def train_cfg(**kw):
        t = {"init": "glas-unet", "preset": None, "lr": 1e-3, "repeats": 2, "val_fraction": 0.2,
             "tune_postprocess": True,
             "stages": [{"lr": 1e-3, "epochs": 100, "batch_size": 8}], **kw}
        return t

    t = train_cfg()
    apply_small_set(t, 3, d)
    assert t["stages"][0]["lr"] == SMALL_SET["lr"] and t["val_fraction"] == 0
    assert t["stages"][0]["epochs"] == SMALL_SET["epochs"] and not t["tune_postprocess"]
    assert t["repeats"] * 3 * SMALL_SET["epochs"] >= SMALL_SET["steps"] * 8
    t = train_cfg()
    apply_small_set(t, 12, d)
    assert t["val_fraction"] == pytest.approx(1 / 3) and t["repeats"] == 10
    t = train_cfg(lr=5e-5, stages=[{"lr": 5e-5, "epochs": 3, "batch_size": 8}])
    apply_small_set(t, 12, d)  # explicit options are kept
    assert t["stages"][0]["lr"] == 5e-5 and t["stages"][0]["epochs"] == 3 and t["repeats"] == 2
    for t in (train_cfg(init=None), train_cfg(preset="study")):
        assert apply_small_set(t, 3, d) == [] and t["stages"][0]["lr"] == 1e-3
    assert apply_small_set(train_cfg(), 40, d) == []


def test_tiny_finetune_on_geojson_corrections(tmp_path):
    """From a 1-epoch model to a fine-tune on 4 corrected images (GeoJSON, one with a
    Region): small-set defaults, validation on the training images, frozen encoder."""
    data = make_corrections(tmp_path / "c", 4, extra={0: [region(0, 0, 40, 64)]})
    base = train(TrainConfig(model="unet", data=str(data), out=str(tmp_path / "base"),
                             model_args={"width": 4, "out_channels": 1}, epochs=1, crop=48,
                             scale=1.0, workers=0, batch_size=2, repeats=1,
                             tune_postprocess=False, device="cpu"))
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "ft"), init=str(base),
                            crop=48, workers=0, batch_size=2, device="cpu",
                            freeze_encoder=True))
    cfg = ckpt.load_json(run / "config.json")
    t = cfg["train"]
    assert t["val_on_train"] and sorted(t["val_images"]) == sorted(t["train_images"])
    assert len(t["train_images"]) == 4 and t["stages"][0]["lr"] == SMALL_SET["lr"]
    assert t["stages"][0]["epochs"] == SMALL_SET["epochs"] and not t["tune_postprocess"]
    assert any("small-set defaults" in n for n in t["notes"])
    from safetensors.torch import load_file

    a, b = load_file(str(base / "best.safetensors")), load_file(str(run / "last.safetensors"))
    enc = [k for k in a if k.startswith(("downs.", "bottleneck."))]
    dec = [k for k in a if k.startswith(("ups.", "up_convs.", "head."))]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc)  # frozen, BN stats too
    assert any(not torch.equal(a[k], b[k]) for k in dec)


def test_freeze_encoder_errors_for_networks_without_one():
    with pytest.raises(GlandsegError, match="no encoder to freeze"):
        freeze_encoder(torch.nn.Conv2d(3, 3, 1))


def test_images_at_another_resolution_are_resampled_to_the_models(tmp_path):
    """An image whose metadata says 1.24 µm/px trains and validates at the model's 0.62."""
    root = tmp_path / "c"
    root.mkdir()
    img, lab = synth_pair(32, 40, n_glands=2)
    dpi = 25400 / 1.2401
    Image.fromarray(img).save(root / "half.png", dpi=(dpi, dpi))
    (root / "half.geojson").write_text(json.dumps(to_geojson(lab.astype(np.int32))))
    s = discover(root)
    it = GlasDataset(s, mpp=0.62005)[0]
    assert it["image"].shape[-2:] == (64, 80) and it["labels"].max() == 2
    assert GlasDataset(s)[0]["image"].shape[-2:] == (32, 40)  # model resolution unknown
    _, image, truth = validation_item(s[0], 0.62005)
    assert image.shape[:2] == truth.shape == (64, 80)


def test_whole_slide_geojson_is_refused_clearly(tmp_path):
    from glandseg.train.finetune import training_samples

    root = make_corrections(tmp_path / "c", 1)
    (root / "big.svs").write_bytes(b"not really a slide")
    (root / "big.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                  "features": [region(0, 0, 500, 500)]}))
    with pytest.raises(GlandsegError, match="big.geojson: annotates the slide big.svs; "
                                            "whole-slide GeoJSON training is not supported yet"):
        training_samples(str(root))
