"""The data layer on the real GlaS folder (``../shared/glas`` or ``$GLANDSEG_GLAS``);
skipped when it is absent."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from glandseg.cli import main
from glandseg.data.check import check_folder
from glandseg.data.dataset import GlasDataset, patient_split
from glandseg.data.discover import discover
from glandseg.data.transforms import AugmentConfig, train_transform

pytestmark = pytest.mark.glas


def test_discover_counts_grades_patients(glas_dir: Path) -> None:
    samples = discover(glas_dir)
    assert Counter(s.split for s in samples) == {"train": 85, "testA": 60, "testB": 20}
    assert all(s.anno is not None for s in samples)
    assert all(s.grade in ("benign", "malignant") for s in samples)
    assert all(isinstance(s.patient, int) for s in samples)
    assert Counter(s.grade for s in samples) == {"malignant": 91, "benign": 74}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_of_training_images(glas_dir: Path, seed: int) -> None:
    train_set = discover(glas_dir, splits=("train",))
    train, val = patient_split(train_set, 0.2, seed)
    assert len(train) + len(val) == 85 and val
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert 0.08 < len(val) / 85 < 0.35


def test_data_check_api_and_cli(glas_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    # One full check through the CLI (as check-contracts runs it), read back as JSON.
    assert main(["data", "check", str(glas_dir), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    for n in ("85", "60", "20"):
        assert f" {n} " in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["ok"] and not [p for p in r["problems"] if p["level"] == "error"]
    assert {k: (v["images"], v["annotations"]) for k, v in r["splits"].items()} == {
        "train": (85, 85), "testA": (60, 60), "testB": (20, 20),
    }
    assert r["splits"]["testB"]["min_size_hw"] == r["splits"]["testB"]["max_size_hw"] == [522, 775]
    assert min(v["min_size_hw"] for v in r["splits"].values()) == [430, 567]
    # The API on a few headers only (quick mode) agrees on the counts.
    quick = check_folder(glas_dir, decode_images=False)
    assert quick.splits["train"].images == 85


def test_lazy_dataset_item(glas_dir: Path) -> None:
    samples = discover(glas_dir, splits=("testB",))[:2]
    data = GlasDataset(samples, transform=train_transform(AugmentConfig(crop=256)), scale=0.5)
    item = data[0]
    assert item["image"].shape == (3, 256, 256) and item["labels"].dtype == torch.int64
    # the crop's labels are the annotation's own gland ids (never relabelled), and a 256²
    # crop of a half-size Test B image (261 x 387) always holds glands
    from glandseg.data.io import read_label

    ids = set(read_label(samples[0].anno).ravel().tolist())
    got = set(torch.unique(item["labels"]).tolist())
    assert got <= ids and len(got - {0}) >= 1, (sorted(got), sorted(ids))
    assert item["image"].float().std() > 0  # real pixels, not a constant pad
