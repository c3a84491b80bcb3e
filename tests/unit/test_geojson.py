"""QuPath GeoJSON annotations → label images (glandseg.data.geojson, read_label)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

import glandseg
from glandseg import GlandsegError
from glandseg.data import geojson as gj
from glandseg.data.io import read_label


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(coords, kind="Polygon", cls=None, name=None, object_type="annotation", **props):
    p = {"objectType": object_type, **props}
    if cls is not None:
        p["classification"] = cls
    if name is not None:
        p["name"] = name
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": p}


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_polygon_holes_multipolygon_and_quirks(tmp_path):
    """QuPath's forms: a plain list of Features, nested classification (name / names /
    string), measurements as a list (QuPath 0.2) or a dict, detections, a hole, a
    MultiPolygon (one gland in two pieces)."""
    feats = [
        feature([square(2, 2, 12, 12), square(5, 5, 8, 8)], cls={"name": "Gland", "color": [0, 200, 0]},
                measurements=[{"name": "Area", "value": 3.0}]),
        feature([[square(20, 2, 24, 6)], [square(26, 2, 30, 6)]], kind="MultiPolygon",
                cls={"names": ["Tumor", "Positive"], "colorRGB": -3670016}, object_type="detection",
                measurements={"Area µm^2": 1.0}),
        feature([square(2, 20, 6, 24)], cls="Gland"),
    ]
    p = write(tmp_path / "a.geojson", feats)
    lab = read_label(p, shape=(32, 40))
    assert lab.dtype == np.int32 and lab.shape == (32, 40)
    # pixel (r, c) is in when its centre (c + .5, r + .5) is inside: square 2..12 -> 2..11
    assert (lab[2:12, 2:12] > 0).sum() == 100 - 9 and lab[6, 6] == 0 and lab[2, 2] == 1
    assert lab[1, 2] == 0 and lab[12, 12] == 0
    assert set(np.unique(lab[2:6, 20:30])) == {0, 2} and (lab == 2).sum() == 32
    assert (lab == 3).sum() == 16
    ann = gj.read_geojson(p)
    assert [s.kind for s in ann.shapes] == ["gland"] * 3 and ann.warnings == []


def test_feature_collection_regions_and_ignore(tmp_path):
    data = {"type": "FeatureCollection", "features": [
        feature([square(0, 0, 20, 20)], cls={"name": "Region*"}),
        feature([square(2, 2, 10, 10)]),
        feature([square(12, 12, 18, 18)], cls={"name": "Ignore*"}),
        feature([square(25, 25, 30, 30)], name="outside the region"),
    ]}
    p = write(tmp_path / "b.geojson", data)
    r = gj.read_geojson_label(p, (32, 32))
    assert r.labels.max() == 2 and (r.labels == 2).sum() == 25  # glands outside regions kept
    assert r.n_regions == 1 and r.n_ignores == 1
    assert r.ignore[25, 25] and r.ignore[14, 14] and not r.ignore[5, 5] and not r.ignore[19, 0]
    assert r.ignore.sum() == 32 * 32 - 400 + 36
    # read_label gives the glands only
    np.testing.assert_array_equal(read_label(p, (32, 32)), r.labels)


def test_shape_from_the_image_beside(tmp_path):
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(tmp_path / "img.png")
    p = write(tmp_path / "img.geojson", [feature([square(1, 1, 5, 5)])])
    assert read_label(p).shape == (30, 50)
    q = write(tmp_path / "img_anno.geojson", [feature([square(1, 1, 5, 5)])])
    assert glandseg.read_label(q).shape == (30, 50)
    lone = write(tmp_path / "lone.geojson", [feature([square(1, 1, 5, 5)])])
    with pytest.raises(GlandsegError, match=r"lone\.geojson.*no image.*shape"):
        read_label(lone)
    with pytest.raises(GlandsegError, match="shape"):
        read_label(p, shape=(0, 5))


def test_label_image_shape_checked(tmp_path):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "x_anno.png")
    assert read_label(tmp_path / "x_anno.png", shape=(10, 12)).shape == (10, 12)
    with pytest.raises(GlandsegError, match="12x10.*expected 10x12"):
        read_label(tmp_path / "x_anno.png", shape=(12, 10))


@pytest.mark.parametrize("text, match", [
    ("", "empty file"),
    ("  \n", "empty file"),
    ('{"type": "FeatureCollection", "features": [', "not valid JSON.*line 1"),
    ('{"hello": 1}', "not GeoJSON"),
    ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", 1]]]}}]',
     "feature 1: coordinates are not"),
    ('[1]', "feature 1 is not a GeoJSON Feature"),
])
def test_errors_one_line_naming_file(tmp_path, text, match):
    p = tmp_path / "bad.geojson"
    p.write_text(text)
    with pytest.raises(GlandsegError, match=match) as e:
        read_label(p, shape=(8, 8))
    assert "\n" not in str(e.value) and "bad.geojson" in str(e.value)


def test_empty_collection_is_no_glands(tmp_path):
    p = write(tmp_path / "e.geojson", {"type": "FeatureCollection", "features": []})
    assert read_label(p, shape=(5, 6)).max() == 0


def test_warnings_name_file_and_feature(tmp_path, caplog):
    bowtie = [[0, 12], [6, 18], [6, 12], [0, 16], [0, 12]]
    feats = [
        feature([square(2, 2, 10, 10)], name="Gland 1"),
        feature([square(6, 6, 14, 14)], name="Gland 2"),  # overlaps feature 1
        feature([bowtie], name="bow"),  # crosses itself
        feature([square(100, 100, 110, 110)]),  # outside
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {}},
        {"type": "Feature", "geometry": None, "properties": {}},
    ]
    p = write(tmp_path / "w.geojson", feats)
    with caplog.at_level(logging.WARNING, logger="glandseg"):
        r = gj.read_geojson_label(p, (20, 20))
    text = "\n".join(r.warnings)
    assert "feature 2 (Gland 2) overlaps feature 1 (Gland 1) by 16 px" in text
    assert "feature 3 (bow): the outline crosses itself near x=2, y=14" in text
    assert "feature 4 lies outside the 20x20 image" in text
    assert "feature 5 is a Point" in text and "feature 6 has no geometry" in text
    assert all(w.startswith(str(p)) and "\n" not in w for w in r.warnings)
    assert len(caplog.records) == len(r.warnings)
    assert (r.labels == 2).sum() == 64 and (r.labels == 1).sum() == 64 - 16


def test_self_intersection_detector():
    assert gj.self_intersection(np.array(square(0, 0, 4, 4), float)) is None
    star = np.array([[0, 0], [4, 0], [1, 3], [2, -1], [3, 3], [0, 0]], float)
    assert gj.self_intersection(star) is not None


def test_our_own_geojson_round_trips(tmp_path):
    """read_label of predict's <stem>.geojson gives back the label image (ids kept):
    F1 1.0 and object Dice >= 0.98 with the official metrics."""
    from skimage.draw import disk, ellipse

    from glandseg.report.outputs import write_outputs

    rng = np.random.default_rng(0)
    lab = np.zeros((300, 400), np.int32)
    k = 0
    for cy in range(40, 300, 80):
        for cx in range(40, 400, 90):
            k += 1
            rr, cc = ellipse(cy, cx, rng.integers(15, 35), rng.integers(15, 40), lab.shape,
                             rotation=rng.uniform(0, 3))
            lab[rr, cc] = k
    rr, cc = disk((40, 40), 6)
    lab[rr, cc] = 0  # a gland with a hole (lumen)
    lab[200:210, 0:12] = k + 1  # touching the image edge
    lab[lab == 3] = 0
    lab[120:130, 120:140][lab[120:130, 120:140] == 0] = 3  # a gland in two pieces
    image = np.full(lab.shape + (3,), 200, np.uint8)
    write_outputs(tmp_path, "pred", image, lab)
    back = read_label(tmp_path / "pred.geojson", shape=lab.shape)
    assert set(np.unique(back)) == set(np.unique(lab))
    s = glandseg.score(back, lab)
    assert s["f1"] == 1.0 and s["object_dice"] >= 0.98
    # the image beside it gives the shape too
    Image.fromarray(image).save(tmp_path / "pred_src.png")
    (tmp_path / "pred_src.geojson").write_text((tmp_path / "pred.geojson").read_text())
    np.testing.assert_array_equal(read_label(tmp_path / "pred_src.geojson"), back)
