"""Patient-wise cross-validation (glandseg.train.cv) and the v5 driver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from glandseg import GlandsegError
from glandseg.data.discover import Sample
from glandseg.train import cv
from glandseg.train.gpu_data import normalised_distance

ROOT = Path(__file__).resolve().parents[2]
GLAS = ROOT.parent / "shared" / "glas"


def _samples(patients: list[tuple[int, int, str]]) -> list[Sample]:
    out, n = [], 0
    for pid, count, grade in patients:
        for _ in range(count):
            n += 1
            out.append(Sample(f"train_{n}", Path(f"train_{n}.png"), Path(f"train_{n}_anno.png"),
                              "train", grade, pid))
    return out


def test_patient_folds_partition_by_patient_and_balance():
    rng = np.random.default_rng(0)
    pats = [(p, int(rng.integers(2, 10)), "malignant" if p % 2 else "benign") for p in range(15)]
    samples = _samples(pats)
    folds = cv.patient_folds(samples, 5, seed=0)
    names = [s.name for f in folds for s in f]
    assert sorted(names) == sorted(s.name for s in samples) and len(set(names)) == len(names)
    owners = {}
    for i, f in enumerate(folds):
        for s in f:
            assert owners.setdefault(s.patient, i) == i  # a patient in one fold only
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= max(c for _, c, _ in pats)
    assert all(any(s.grade == "malignant" for s in f) for f in folds)
    assert [s.name for s in cv.patient_folds(samples, 5, 0)[2]] == [s.name for s in folds[2]]
    with pytest.raises(GlandsegError, match="cannot fill"):
        cv.patient_folds(samples[:3], 5)


class _Fake(nn.Module):
    """A 'network' with a 3-channel conv head, equivariant to flips and rotations."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 3, 1)
        self.stride = 32

    def forward(self, x):
        return self.head(x)


def test_distance_head_adds_a_channel_keeping_the_first_three():
    net = _Fake()
    w = net.head.weight.detach().clone()
    d = cv.DistanceHead(net)
    y = d(torch.rand(1, 3, 32, 32))
    assert y.shape == (1, 4, 32, 32)
    assert torch.equal(d.net.head.weight[:3], w)
    with pytest.raises(GlandsegError, match="3-channel"):
        cv.DistanceHead(nn.Sequential())


def test_predict_maps_tta_modes_agree_on_an_equivariant_net():
    torch.manual_seed(0)
    net = cv.DistanceHead(_Fake()).eval()
    mc = {"preprocess": {"scale": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3}}
    img = (np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)
    p0, d0 = cv.predict_maps(net, img, mc, "none")
    assert p0.shape == (3, 45, 70) and d0.shape == (45, 70)
    np.testing.assert_allclose(p0.sum(0), 1, atol=1e-5)
    for mode in ("flip", "dihedral"):
        p, d = cv.predict_maps(net, img, mc, mode)
        np.testing.assert_allclose(p, p0, atol=1e-5)
        np.testing.assert_allclose(d, d0, atol=1e-5)
    mc["preprocess"]["scale"] = 0.5  # working scale: maps come back at the image's size
    p, d = cv.predict_maps(net, img, mc, "dihedral")
    assert p.shape == (3, 45, 70) and d.shape == (45, 70)


def test_oof_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.random((3, 20, 30)).astype(np.float32)
    p /= p.sum(0)
    dist = rng.random((20, 30)).astype(np.float32)
    cv.save_oof(tmp_path / "a" / "x.npz", p, dist)
    q, e = cv.load_oof(tmp_path / "a" / "x.npz")
    np.testing.assert_allclose(q[1:], p[1:], atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(e, dist, atol=0.5 / 255 + 1e-6)
    cv.save_oof(tmp_path / "y.npz", p, None)
    assert cv.load_oof(tmp_path / "y.npz")[1] is None


def _touching(shift: int) -> np.ndarray:
    yy, xx = np.mgrid[:80, :120]
    lab = np.zeros((80, 120), np.int32)
    lab[(yy - 40) ** 2 + (xx - 35 - shift) ** 2 < 22**2] = 1
    lab[(yy - 40) ** 2 + (xx - 78 - shift) ** 2 < 22**2] = 2
    return lab


def test_select_prefers_distance_seeds_when_contour_seeds_merge(tmp_path):
    """OOF maps whose interior merges touching glands but whose distance separates them:
    the selection must pick the distance seeds, and report per-fold spread."""
    import imageio.v3 as iio

    data, out = tmp_path / "glas", tmp_path / "cv"
    data.mkdir()
    folds = [[], []]
    for i in range(4):
        lab = _touching(i)
        name = f"train_{i + 1}"
        iio.imwrite(data / f"{name}.png", np.zeros((80, 120, 3), np.uint8))
        iio.imwrite(data / f"{name}_anno.png", lab.astype(np.uint8))
        fg = (lab > 0).astype(np.float32)
        probs = np.stack([1 - fg, fg, np.zeros_like(fg)])
        for mode in ("none", "dihedral"):
            cv.save_oof(out / f"fold_{i % 2}" / "oof" / mode / f"{name}.npz", probs,
                        normalised_distance(lab))
        folds[i % 2].append(name)
    (out / "folds.json").write_text(json.dumps({"folds": [{"images": f} for f in folds]}))
    grids = {"contour": {"interior_threshold": [0.5], "min_area": [20]},
             "distance": {"seed_threshold": [0.4, 0.5], "min_area": [20]}}
    s = cv.select(out, data, workers=1, grids=grids)
    assert s["method"] == "distance" and s["n_images"] == 4 and s["folds"] == 2
    assert s["oof_pooled_split_gt"]["f1"] == pytest.approx(1.0)
    assert len(s["per_fold"]) == 2 and s["fold_spread"]["f1"]["std"] == pytest.approx(0.0)
    rows = (out / "selection.csv").read_text().splitlines()
    assert rows[0].startswith("stage,mode,method") and len(rows) == 1 + 4 + 2
    # parallel grid parts give the same choice
    assert cv.select(out, data, workers=2, grids=grids)["postprocess"] == s["postprocess"]


def test_config_checks():
    with pytest.raises(GlandsegError, match="folds"):
        cv.CVConfig(folds=1).check()
    with pytest.raises(GlandsegError, match="tta"):
        cv.CVConfig(tta=("nine",)).check()
    with pytest.raises(GlandsegError, match="unknown augmentation"):
        cv.CVConfig(augment={"stain": 1}).augmentation()
    with pytest.raises(GlandsegError, match="contour"):
        cv.model_config(cv.CVConfig(model="maskrcnn-lite0"))


@pytest.mark.slow
@pytest.mark.skipif(not (GLAS / "Grade.csv").is_file(), reason="GlaS data not in ../shared/glas")
def test_v5_driver_quick_end_to_end(tmp_path):
    """results/training/v5_cv.py --quick: 2 folds of 3 images + final, OOF maps, selection."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "results/training/v5_cv.py"), "--quick",
                        "--data", str(GLAS), "--out", str(out), "--tta", "none,dihedral",
                        "--no-pretrained"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["n_images"] == 6 and s["folds"] == 2 and s["tta"] in ("none", "dihedral")
    assert {"f1", "object_dice", "object_hausdorff"} <= set(s["oof_pooled_split_gt"])
    for k in (0, 1):
        assert (out / f"fold_{k}" / "weights.safetensors").is_file()
        assert len(list((out / f"fold_{k}" / "oof" / "dihedral").glob("*.npz"))) == 3
    assert (out / "final" / "weights.safetensors").is_file()
    net, mc = cv.load_network(out / "fold_0")
    assert mc["model_card"]["distance_head"] is True
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 64, 64)
