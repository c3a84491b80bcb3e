"""The public API in ``glandseg/__init__``: lazy (``import glandseg`` loads neither torch nor
numpy), complete (``__all__``), and ``score`` gives the official metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import glandseg


def test_import_is_cheap() -> None:
    code = ("import json, sys, glandseg, glandseg.cli\n"
            "print(json.dumps([m for m in ('torch', 'numpy', 'scipy', 'timm') "
            "if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_all_names_resolve_to_their_modules() -> None:
    from glandseg.data import io
    from glandseg.infer.predictor import Predictor
    from glandseg.models import store
    from glandseg.models.config import ModelConfig

    for name in glandseg.__all__:
        assert getattr(glandseg, name) is not None, name
    assert glandseg.Predictor is Predictor
    assert glandseg.load_model is store.load_model
    assert glandseg.ModelConfig is ModelConfig
    assert glandseg.read_image is io.read_image and glandseg.read_label is io.read_label
    assert set(glandseg.__all__) <= set(dir(glandseg))
    with pytest.raises(AttributeError, match="no attribute 'Predicter'"):
        glandseg.Predicter  # noqa: B018


def test_star_import() -> None:
    ns: dict = {}
    exec("from glandseg import *", ns)
    assert {"Predictor", "score", "GlandsegError", "load_model"} <= set(ns)


def _two_glands() -> np.ndarray:
    gt = np.zeros((60, 80), np.int32)
    gt[10:30, 10:30] = 1
    gt[35:55, 40:75] = 2
    return gt


def test_score_one_image() -> None:
    gt = _two_glands()
    assert glandseg.score(gt, gt) == {"f1": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0}
    pred = gt.copy()
    pred[pred == 2] = 0  # one gland missed: TP 1, FN 1 → F1 2/3
    s = glandseg.score(pred, gt)
    assert s["f1"] == pytest.approx(2 / 3)
    assert 0 < s["object_dice"] < 1 and s["object_hausdorff"] > 0


def test_score_split_gt() -> None:
    gt = _two_glands()
    gt[gt == 2] = 1  # one id on two separate glands (as in four GlaS Test B files)
    pred = _two_glands()
    assert glandseg.score(pred, gt)["f1"] < 1
    assert glandseg.score(pred, gt, split_gt=True)["f1"] == 1.0


def test_score_many_images_by_part() -> None:
    gt = _two_glands()
    pred = gt.copy()
    pred[pred == 2] = 0
    s = glandseg.score({"testA_1": gt, "testB_1": pred}, {"testA_1": gt, "testB_1": gt})
    assert set(s) == {"testA", "testB"}
    assert s["testA"]["pooled"]["f1"] == 1.0
    assert s["testB"]["pooled"]["fn"] == 1 and s["testB"]["n_images"] == 1


def test_score_errors() -> None:
    gt = _two_glands()
    with pytest.raises(glandseg.GlandsegError, match="shape"):
        glandseg.score(gt[:10], gt)
    with pytest.raises(glandseg.GlandsegError, match="testA_2"):
        glandseg.score({"testA_1": gt}, {"testA_1": gt, "testA_2": gt})
    with pytest.raises(TypeError):
        glandseg.score({"testA_1": gt}, gt)
