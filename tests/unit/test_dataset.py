"""The lazy dataset (decodes only on access, cache, DataLoader workers) and patient_split."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from glandseg import GlandsegError
from glandseg.data import dataset as ds
from glandseg.data.discover import Sample, discover
from glandseg.data.transforms import AugmentConfig, train_transform


@pytest.fixture
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the decodes the dataset does (``read_image`` / ``read_label`` calls)."""
    counts = {"image": 0, "label": 0}
    real_image, real_label = ds.read_image, ds.read_label

    def image(path: Path) -> np.ndarray:
        counts["image"] += 1
        return real_image(path)

    def label(path: Path) -> np.ndarray:
        counts["label"] += 1
        return real_label(path)

    monkeypatch.setattr(ds, "read_image", image)
    monkeypatch.setattr(ds, "read_label", label)
    return counts


def test_construction_decodes_nothing(make_glas: Callable[..., Path], counted_reads: dict) -> None:
    samples = discover(make_glas(ext=".png"))
    data = ds.GlasDataset(samples, transform=train_transform(AugmentConfig(crop=16)), scale=0.5)
    assert counted_reads == {"image": 0, "label": 0}
    assert len(data) == len(samples)
    item = data[0]
    assert counted_reads == {"image": 1, "label": 1}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["labels"].dtype == torch.int64 and item["labels"].shape == (16, 16)
    assert item["name"] == samples[0].name


@pytest.mark.parametrize("cache", [False, True])
def test_cache(make_glas: Callable[..., Path], counted_reads: dict, cache: bool) -> None:
    samples = discover(make_glas(ext=".png"))
    data = ds.GlasDataset(samples, cache=cache, repeats=3)
    assert len(data) == 3 * len(samples)
    a = data[1]
    b = data[1 + len(samples)]  # the same image, a repeat
    assert counted_reads["image"] == (1 if cache else 2)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    a["labels"][:] = 7  # items must not alias the cache
    assert not torch.equal(data[1]["labels"], a["labels"])


def test_scale_and_labels(make_glas: Callable[..., Path]) -> None:
    samples = discover(make_glas(ext=".bmp", size=(40, 48), n_glands=3))
    full = ds.GlasDataset(samples[:1])[0]
    half = ds.GlasDataset(samples[:1], scale=0.5)[0]
    assert half["image"].shape[-2:] == (20, 24) and full["image"].shape[-2:] == (40, 48)
    assert set(half["labels"].unique().tolist()) == set(full["labels"].unique().tolist()) == {0, 1, 2, 3}


def test_target_fn(make_glas: Callable[..., Path]) -> None:
    samples = discover(make_glas(ext=".png"))
    data = ds.GlasDataset(samples, target_fn=lambda lab: {"fg": (lab > 0).float()})
    item = data[0]
    assert torch.equal(item["fg"], (item["labels"] > 0).float())


def test_missing_annotation_and_size_mismatch(make_glas: Callable[..., Path]) -> None:
    root = make_glas(ext=".png", names=("train_1", "train_2"))
    (root / "train_1_anno.png").unlink()
    with pytest.raises(GlandsegError, match="no annotation for train_1"):
        ds.GlasDataset(discover(root))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "train_2_anno.png")
    data = ds.GlasDataset(discover(root, splits=("train",))[1:])
    with pytest.raises(GlandsegError, match="train_2_anno.png: annotation is"):
        data[0]
    with pytest.raises(ValueError):
        ds.GlasDataset([], repeats=0)


def test_dataloader_two_workers(make_glas: Callable[..., Path]) -> None:
    samples = discover(make_glas(ext=".png", names=tuple(f"train_{i}" for i in range(1, 7))))
    data = ds.GlasDataset(samples, transform=train_transform(AugmentConfig(crop=24)), scale=0.5,
                          cache=True, repeats=2)
    loader = DataLoader(data, batch_size=4, num_workers=2, shuffle=True, persistent_workers=False)
    names: list[str] = []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 24, 24)
        assert batch["labels"].shape[1:] == (24, 24) and batch["labels"].dtype == torch.int64
        names += batch["name"]
    assert sorted(names) == sorted([s.name for s in samples] * 2)


def _fake_samples(n_patients: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for p in range(n_patients):
        grade = "malignant" if p % 3 else "benign"
        for j in range(rng.randint(1, 6)):
            out.append(Sample(f"train_{p}_{j}", Path(f"/x/{p}_{j}.png"), Path("/x/a.png"), "train", grade, p))
    return out


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split(fraction: float, seed: int) -> None:
    samples = _fake_samples(40, seed)
    train, val = ds.patient_split(samples, fraction, seed)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert sorted(s.name for s in train + val) == sorted(s.name for s in samples)
    assert abs(len(val) / len(samples) - fraction) < 0.08
    mal = lambda xs: sum(s.grade == "malignant" for s in xs) / len(xs)  # noqa: E731
    assert abs(mal(val) - mal(samples)) < 0.2
    assert ds.patient_split(samples, fraction, seed) == (train, val)  # deterministic


def test_patient_split_edge_cases() -> None:
    samples = _fake_samples(10)
    train, val = ds.patient_split(samples, 0.0)
    assert val == [] and train == samples
    # No patient IDs: each image is its own patient.
    loose = [Sample(f"x{i}", Path(f"/x/{i}"), Path("/x/a"), "other") for i in range(50)]
    train, val = ds.patient_split(loose, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    with pytest.raises(ValueError):
        ds.patient_split(samples, 1.0)
