"""Per-image uncertainty: the definition, images.csv's column and index.html's order."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from PIL import Image

from glandseg.engine.predict import predict_files
from glandseg.metrics.uncertainty import CONFIDENT, NEAR_GLAND, uncertainty
from glandseg.report.html import index_html


def probs_of(bg, interior, boundary):
    return np.stack([np.asarray(bg, np.float32), np.asarray(interior, np.float32),
                     np.asarray(boundary, np.float32)])


def test_definition():
    # 4 pixels: plain background (not near glands), a sure gland, two unsure near-gland pixels
    p = probs_of([[0.95, 0.05], [0.5, 0.3]], [[0.03, 0.9], [0.3, 0.4]], [[0.02, 0.05], [0.2, 0.3]])
    assert uncertainty(p) == pytest.approx(2 / 3)
    assert uncertainty(probs_of([[1.0]], [[0.0]], [[0.0]])) == 0.0  # nothing near a gland
    # binary models: one channel, the gland probability
    assert uncertainty(np.array([[[0.05, 0.95, 0.5, 0.2]]], np.float32)) == pytest.approx(1 / 3)
    assert 0 < NEAR_GLAND < CONFIDENT < 1
    with pytest.raises(ValueError, match="probs must be"):
        uncertainty(np.zeros((2, 4, 4)))


class FakeDense:
    """A dense 'model': glands where the image is dark; how sure it is comes from the
    image's green value (so each test image has a known uncertainty)."""

    def predict_with_proba(self, image, mpp=None):
        dark = image[..., 0] < 128
        sure = image[0, 0, 1] / 255.0
        fg = np.where(dark, sure, 0.4)
        p = probs_of(1 - fg, fg, np.zeros_like(fg))
        return dark.astype(np.int32), p

    def predict(self, image, mpp=None):
        return self.predict_with_proba(image, mpp)[0]


def test_predict_writes_uncertainty_and_sorts_index(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name, green in (("a_sure", 250), ("b_unsure", 150), ("c_mid", 200)):
        img = np.full((32, 32, 3), 220, np.uint8)
        img[..., 1] = green
        img[8:24, 8:24, 0] = 50
        Image.fromarray(img).save(src / f"{name}.png")
    out = tmp_path / "out"
    predict_files(sorted(src.glob("*.png")), out, FakeDense(), progress=False)
    with open(out / "images.csv", newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["a_sure", "b_unsure", "c_mid"]  # the CSV stays in name order
    u = {k: float(r["uncertainty"]) for k, r in rows.items()}
    # every pixel is near a gland (0.4 or more); the glands (1/4) are unsure when < 0.7
    assert u["a_sure"] == pytest.approx(0.75) and u["c_mid"] == pytest.approx(0.75)
    assert u["b_unsure"] == pytest.approx(1.0)
    html = (out / "index.html").read_text()
    order = re.findall(r'id="img-([a-z_]+)"', html)
    assert order[0] == "b_unsure" and "uncertainty 1.00" in html and "Most uncertain first" in html


def test_index_without_uncertainty_keeps_order():
    ims = [{"image": n, "n_glands": 1, "grade": "", "grade_probability": "", "files": []}
           for n in ("x", "y")]
    ims.append({**ims[0], "image": "z", "uncertainty": 0.1})
    html = index_html(ims)
    assert re.findall(r'id="img-([a-z]+)"', html) == ["z", "x", "y"]
