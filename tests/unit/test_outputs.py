"""Per-image outputs: overlay, GeoJSON, morphometrics CSV, write_outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from glandseg.data.io import read_image, read_label
from glandseg.report import outputs as o


def _ring_area(ring) -> float:
    a = np.asarray(ring, dtype=float)
    return 0.5 * float(np.dot(a[:-1, 0], a[1:, 1]) - np.dot(a[1:, 0], a[:-1, 1]))


@pytest.fixture
def labels() -> np.ndarray:
    """100 x 120 label image: a disk (id 3), a square with a hole (id 7), a tiny square
    (id 9), a two-piece gland (id 11) and a gland touching the disk (id 12)."""
    yy, xx = np.mgrid[:100, :120]
    lab = np.zeros((100, 120), np.int32)
    lab[(yy - 50) ** 2 + (xx - 40) ** 2 < 20**2] = 3
    lab[10:30, 80:110] = 7
    lab[15:20, 90:95] = 0
    lab[60:62, 90:92] = 9
    lab[70:73, 70:73] = 11
    lab[85:90, 100:104] = 11
    lab[45:55, 60:70] = 12
    return lab


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)


def test_geojson_features(labels: np.ndarray) -> None:
    gj = o.to_geojson(labels, mpp=0.5, image_name="img")
    json.dumps(gj, allow_nan=False)  # valid JSON, no NaN
    assert gj["type"] == "FeatureCollection"
    feats = gj["features"]
    assert len(feats) == len(np.unique(labels)) - 1
    names = [f["properties"]["name"] for f in feats]
    assert names == ["Gland 3", "Gland 7", "Gland 9", "Gland 11", "Gland 12"]
    assert len({f["id"] for f in feats}) == len(feats)
    for f in feats:
        assert f["type"] == "Feature"
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "Gland"
        assert len(props["classification"]["color"]) == 3
        assert props["measurements"]["Area px^2"] > 0
        geom = f["geometry"]
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for poly in polys:
            for i, ring in enumerate(poly):
                assert len(ring) >= 4 and ring[0] == ring[-1]  # closed
                assert (_ring_area(ring) > 0) == (i == 0)  # exterior +, holes -
                xs, ys = zip(*ring, strict=True)
                assert 0 <= min(xs) and max(xs) <= 120 and 0 <= min(ys) and max(ys) <= 100
    by = {f["properties"]["name"]: f for f in feats}
    assert by["Gland 11"]["geometry"]["type"] == "MultiPolygon"
    assert len(by["Gland 11"]["geometry"]["coordinates"]) == 2
    square = by["Gland 7"]["geometry"]["coordinates"]
    assert len(square) == 2  # exterior and the hole
    assert by["Gland 3"]["properties"]["measurements"]["Area µm^2"] == pytest.approx(
        (labels == 3).sum() * 0.25
    )
    assert (
        o.to_geojson(labels, None, "x", object_type="detection")["features"][0]["properties"][
            "objectType"
        ]
        == "detection"
    )


def test_geojson_disk_area_and_position() -> None:
    yy, xx = np.mgrid[:200, :200]
    lab = ((yy - 90) ** 2 + (xx - 120) ** 2 < 40**2).astype(np.int32) * 5
    (feat,) = o.to_geojson(lab, None, "disk")["features"]
    (ring,) = feat["geometry"]["coordinates"]
    area = _ring_area(ring)
    assert area == pytest.approx((lab > 0).sum(), rel=0.02)
    pts = np.asarray(ring)
    # pixel-corner coordinates: the disk's pixel centres are at (120.5, 90.5)
    assert pts[:, 0].mean() == pytest.approx(120.5, abs=1.5)
    assert pts[:, 1].mean() == pytest.approx(90.5, abs=1.5)
    assert len(ring) < 100  # simplified
    # an empty label image gives an empty collection
    assert o.to_geojson(np.zeros((5, 5), np.uint16))["features"] == []


def test_measure_and_csv(labels: np.ndarray, tmp_path: Path) -> None:
    rows = o.measure(labels, mpp=0.5, image="img")
    assert [r["gland_id"] for r in rows] == [3, 7, 9, 11, 12]
    for r in rows:
        assert set(r) == set(o.GLAND_COLUMNS)
        assert r["area_px"] == (labels == r["gland_id"]).sum()
        assert r["area_um2"] == pytest.approx(r["area_px"] * 0.25)
        assert r["perimeter_um"] == pytest.approx(r["perimeter_px"] * 0.5)
        assert r["major_axis_px"] >= r["minor_axis_px"]
        assert 0 <= r["eccentricity"] <= 1 and 0 < r["solidity"] <= 1
    disk = rows[0]
    assert (disk["centroid_x"], disk["centroid_y"]) == pytest.approx((40, 50), abs=0.1)
    assert disk["eccentricity"] < 0.2
    rows_no_mpp = o.measure(labels, None, image="img")
    assert rows_no_mpp[0]["area_um2"] is None

    path = tmp_path / "sub" / "glands.csv"
    o.write_glands_csv(path, rows + rows_no_mpp)
    with path.open() as fh:
        read = list(csv.DictReader(fh))
        assert tuple(read[0]) == o.GLAND_COLUMNS
    assert len(read) == 10
    assert float(read[0]["area_um2"]) == pytest.approx(float(read[0]["area_px"]) * 0.25)
    assert read[5]["area_um2"] == ""
    assert not [p for p in path.parent.iterdir() if p.name != "glands.csv"]  # no temp files


def test_overlay_changes_only_near_boundaries(labels: np.ndarray, image: np.ndarray) -> None:
    out = o.overlay(image, labels, thickness=3)
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = (out != image).any(axis=2)
    assert changed.any()
    assert not changed[labels == 0].any()  # outlines stay inside the glands
    # every changed pixel lies within `thickness` of its gland's edge
    dist = np.zeros(labels.shape)
    for i in np.unique(labels[labels > 0]):
        m = labels == i
        dist[m] = ndi.distance_transform_cdt(np.pad(m, 1), metric="chessboard")[1:-1, 1:-1][m]
    assert dist[changed].max() <= 3
    # the interior of the disk is untouched, its border drawn
    assert not changed[50, 40] and changed[50, 21]
    # touching glands get different colours
    assert not np.array_equal(out[50, 60], out[50, 59])
    assert o.label_colors([3, 7]).shape == (2, 3)
    thin = o.overlay(image, labels, thickness=1)
    assert ((thin != image).any(axis=2)).sum() < changed.sum()
    with pytest.raises(ValueError):
        o.overlay(image[:50], labels)


def test_write_outputs(labels: np.ndarray, image: np.ndarray, tmp_path: Path) -> None:
    lab = labels.copy()
    lab[lab == 12] = 40000  # ids beyond 8 bits must survive
    rows = o.write_outputs(tmp_path / "out", "testA_1", image, lab, mpp=0.62)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "testA_1.geojson",
        "testA_1.png",
        "testA_1_overlay.png",
    ]
    back = read_label(out / "testA_1.png")
    np.testing.assert_array_equal(back, lab)
    from PIL import Image

    with Image.open(out / "testA_1.png") as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
    ov = read_image(out / "testA_1_overlay.png")
    np.testing.assert_array_equal(ov, o.overlay(image, lab))
    gj = json.loads((out / "testA_1.geojson").read_text(encoding="utf-8"))
    assert len(gj["features"]) == 5
    assert [r["gland_id"] for r in rows] == [3, 7, 9, 11, 40000]
    assert rows[0]["image"] == "testA_1"
    assert rows[0]["area_um2"] == pytest.approx(rows[0]["area_px"] * 0.62**2)


def test_simplify_ring_keeps_every_point_within_tolerance() -> None:
    """The fast Douglas-Peucker of gland outlines: closed, fewer points, every original
    point within the tolerance of the simplified ring, same area within 5 %."""
    from skimage.draw import ellipse
    from skimage.measure import approximate_polygon, find_contours

    from glandseg.report.outputs import simplify_ring

    mask = np.zeros((80, 120), np.float32)
    rr, cc = ellipse(40, 60, 30, 50, rotation=0.4)
    mask[rr, cc] = 1
    mask[35:45, 10:30] = 1  # a straight-edged bump: long collinear runs
    ring = find_contours(np.pad(mask, 1), 0.5)[0][:, ::-1]
    simple = simplify_ring(ring, 0.5)
    assert np.array_equal(simple[0], simple[-1]) and 8 < len(simple) < len(ring) / 3

    def dist_to_ring(p: np.ndarray, r: np.ndarray) -> float:
        a, b = r[:-1], r[1:]
        d = b - a
        t = np.clip(((p - a) * d).sum(1) / np.maximum((d * d).sum(1), 1e-12), 0, 1)
        return float(np.min(np.hypot(*(a + t[:, None] * d - p).T)))

    assert max(dist_to_ring(p, simple) for p in ring) <= 0.5 + 1e-9
    area = lambda r: 0.5 * abs(np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[1:, 0], r[:-1, 1]))  # noqa: E731
    assert abs(area(simple) - area(ring)) <= 0.05 * area(ring)
    assert abs(len(simple) - len(approximate_polygon(ring, 0.5))) <= 0.3 * len(simple)


def _random_masks(rng: np.random.Generator, n: int):
    """Random boolean masks: speckle, a few pixels, ellipses, several pieces, lines."""
    from skimage.draw import ellipse

    for t in range(n):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        kind = t % 5
        if kind == 0:
            m = rng.random((h, w)) < rng.random()
        elif kind == 1:
            m = np.zeros((h, w), bool)
            m[rng.integers(0, h, 3), rng.integers(0, w, 3)] = True
        elif kind == 2:
            m = np.zeros((h, w), bool)
            rr, cc = ellipse(h / 2, w / 2, h / 2 + 1, w / 3 + 1, (h, w), rotation=rng.random() * 3)
            m[rr, cc] = True
        elif kind == 3:
            m = rng.random((h, w)) < 0.04
        else:
            m = np.eye(max(h, w), dtype=bool)[:h, :w] | (rng.random((h, w)) < 0.01)
        if m.any():
            yield m


def test_convex_hull_area_and_solidity_equal_skimage() -> None:
    """The hull pixel count equals skimage's convex_hull_image on a few thousand random
    masks (single pixels, lines, diagonals, several pieces), and measure()'s solidity
    equals regionprops' on random label images (glands of several pieces too)."""
    import warnings

    from skimage.measure import regionprops
    from skimage.morphology import convex_hull_image
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(0)
    n = 0
    for m in _random_masks(rng, 2500):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert o.convex_hull_area(m) == int(convex_hull_image(m).sum()), m.astype(int)
        n += 1
    assert n > 2000 and o.convex_hull_area(np.zeros((3, 4), bool)) == 0
    for _ in range(30):
        seeds = np.where(rng.random((60, 70)) < 0.004, rng.integers(1, 9, (60, 70)), 0)
        lab = expand_labels(seeds, int(rng.integers(1, 9))).astype(np.int32)
        lab[rng.random(lab.shape) < 0.05] = 0
        want = {p.label: p.solidity for p in regionprops(lab)}
        assert {r["gland_id"]: r["solidity"] for r in o.measure(lab)} == want


def test_overlay_outline_equals_its_distance_transform_definition() -> None:
    """Thickness 1 and 2 (neighbour tests) draw exactly the pixels of the definition:
    inner boundaries (find_boundaries) grown inward by expand_labels, kept on their gland."""
    from skimage.segmentation import expand_labels, find_boundaries

    rng = np.random.default_rng(1)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        lab = rng.integers(0, int(rng.integers(1, 8)), (h, w)).astype(np.int32)
        if t % 2:
            seeds = np.where(rng.random((h, w)) < 0.05, lab, 0)
            lab = expand_labels(seeds, int(rng.integers(1, 6))).astype(np.int32)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        edge = np.where(find_boundaries(lab, connectivity=1, mode="inner"), lab, 0)
        for thickness in (1, 2):
            grown = expand_labels(edge, distance=thickness - 1) if thickness > 1 else edge
            want = img.copy()
            drawn = (grown == lab) & (lab > 0)
            want[drawn] = o.label_colors(lab[drawn])
            assert np.array_equal(o.overlay(img, lab, thickness), want), (t, thickness)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (64, 97, 3)])
def test_png_rgb_reads_back_the_same_pixels(shape: tuple, tmp_path: Path) -> None:
    from PIL import Image

    img = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    img[: shape[0] // 2] = 200  # flat rows (the Up filter's zeros) and noise
    o.write_overlay(tmp_path / "x.png", img)
    with Image.open(tmp_path / "x.png") as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), img)
    assert np.array_equal(read_image(tmp_path / "x.png"), img)
    with pytest.raises(ValueError, match="uint8"):
        o.png_rgb(np.zeros((0, 4, 3), np.uint8))


def _douglas_peucker_one_segment_at_a_time(ring: np.ndarray, tol: float) -> np.ndarray:
    """Reference: simplify_ring as written before (a stack of segments, one at a time)."""
    import math

    ring = np.asarray(ring, dtype=np.float64)
    if len(ring) > 3:
        prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
        a, b = ring - prev, nxt - ring
        straight = np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) < 1e-9
        straight &= (a * b).sum(axis=1) > 0
        straight[0] = straight[-1] = False
        ring = ring[~straight]
    n = len(ring)
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        s, e = stack.pop()
        if e - s < 2:
            continue
        p0, p1 = ring[s], ring[e]
        seg, d = ring[s + 1:e], p1 - p0
        v0, v1 = seg - p0, seg - p1
        along0, along1 = v0 @ d, -(v1 @ d)
        length = math.hypot(d[0], d[1])
        eucl = np.minimum(np.hypot(v0[:, 0], v0[:, 1]), np.hypot(v1[:, 0], v1[:, 1]))
        if length > 0:
            perp = np.abs(v0[:, 0] * d[1] - v0[:, 1] * d[0]) / length
            dist = np.where((along0 > 0) & (along1 > 0), perp, eucl)
        else:
            dist = eucl
        i = int(np.argmax(dist))
        if dist[i] > tol:
            keep[s + 1 + i] = True
            stack += [(s + 1 + i, e), (s, s + 1 + i)]
    return ring[keep]


def test_simplify_ring_equals_one_segment_at_a_time() -> None:
    """Segments simplified a level at a time keep exactly the points of the one-at-a-time
    Douglas-Peucker, on pixel outlines (ties of equal distances) and random rings."""
    from skimage.measure import find_contours

    rng = np.random.default_rng(3)
    n = 0
    for m in _random_masks(rng, 300):
        for c in find_contours(np.pad(m, 1).astype(np.float32), 0.5):
            ring = c[:, ::-1]
            for tol in (0.5, 1.0, 2.5):
                assert np.array_equal(o.simplify_ring(ring, tol),
                                      _douglas_peucker_one_segment_at_a_time(ring, tol))
                n += 1
    for _ in range(50):
        r = rng.random((int(rng.integers(2, 60)), 2)) * 20
        r = np.vstack([r, r[:1]])
        assert np.array_equal(o.simplify_ring(r, 0.7), _douglas_peucker_one_segment_at_a_time(r, 0.7))
    assert n > 500
