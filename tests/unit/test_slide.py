"""Whole slides and large images: lazy region reading of pyramidal TIFFs made here, the
window grid with its stitching (a gland on a seam comes out whole, exactly once), the
resumable window cache, tissue skipping, other resolutions, the outputs (pyramidal label
TIFF, GeoJSON, glands.csv) and the batch hook. A stub "model" (dark pixels = gland
interior) keeps these fast; one test runs the bundled model on GlaS images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from glandseg import GlandsegError
from glandseg.data import slide as ds
from glandseg.data.slide import image_pixels, is_large, open_slide, write_pyramid
from glandseg.engine import predict as engine
from glandseg.infer import slide as isl
from glandseg.infer.predictor import Predictor
from glandseg.infer.slide import SlideConfig, predict_slide, tissue_mask, window_grid
from glandseg.report import batch
from glandseg.report.slide import write_slide_outputs

SMALL = SlideConfig(core=256, margin=64, thumb_side=256)


pytestmark = pytest.mark.usefixtures("one_thread")


class Dark(nn.Module):
    """Contour "model": interior where the pixel is dark, background where bright, never
    boundary; per-pixel, so every window sees the same probabilities."""

    stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(1, keepdim=True)
        return torch.cat([10 * g, -10 * g, torch.full_like(g, -20)], 1)


def stub_predictor() -> Predictor:
    cfg = {"task": "contour", "preprocess": {"scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3},
           "postprocess": {"min_area": 20, "min_seed_area": 5}}
    return Predictor(Dark(), cfg)


class Counting(Predictor):
    """The stub predictor, counting its calls (or failing on any call)."""

    def __init__(self, fail: bool = False) -> None:
        p = stub_predictor()
        super().__init__(p.model, p.model_config)
        self.calls, self.fail = 0, fail

    def predict(self, image, mpp=None):
        if self.fail:
            raise AssertionError("the cache should have been used")
        self.calls += 1
        return super().predict(image, mpp=mpp)


def disc_image(h: int, w: int, discs: list[tuple[int, int, int]], seed: int = 0,
               border: int = 40) -> np.ndarray:
    """Pink tissue (white beyond ``border``) with dark discs ``(cy, cx, r)``: ``uint8``."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 245, np.uint8)
    img[border:h - border, border:w - border] = (225, 160, 200)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx, r in discs:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (90, 40, 110)
    noise = rng.integers(-8, 9, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def pyramid(path: Path, img: np.ndarray, mpp: float | None = None, tile: int = 128) -> Path:
    """``img`` as a tiled pyramidal TIFF (levels by 2x decimation)."""
    write_pyramid(path, img.shape[:2], lambda lv, y, x, h, w: img[::2 ** lv, ::2 ** lv][
        y:y + h, x:x + w], np.uint8, samples=3, tile=tile, min_side=200, mpp=mpp)
    return path


def objects(labels: np.ndarray) -> list[frozenset]:
    """The objects of a label image as sets of flat pixel indices (ids ignored)."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    parts = np.split(order, starts[1:])
    return sorted((frozenset(p.tolist()) for i, p in zip(ids, parts, strict=True) if i),
                  key=min)


# seams of SMALL's cores at 256 and 512: discs across one seam, across a corner of four
# cores, inside one core, and one larger than the margin
SEAM_DISCS = [(256, 256, 40), (256, 600, 30), (100, 512, 35), (512, 300, 50), (700, 700, 25),
              (400, 100, 20), (520, 780, 90)]


# -- reading --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pyramid", "strips", "plain", "png"])
def test_read_region_equals_array(tmp_path: Path, kind: str) -> None:
    img = np.random.default_rng(1).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    path = tmp_path / ("a.png" if kind == "png" else "a.tif")
    if kind == "pyramid":
        pyramid(path, img, tile=64)
    elif kind == "strips":
        tifffile.imwrite(path, img, compression="zlib", rowsperstrip=16)
    elif kind == "plain":
        tifffile.imwrite(path, img)
    else:
        Image.fromarray(img).save(path)
    with open_slide(path) as s:
        assert s.shape == (300, 420)
        assert s.kind == ("array" if kind == "png" else "tiff")
        if kind in ("pyramid", "strips", "plain"):
            assert s.by_region(0)
        assert np.array_equal(s.read_region(0, 70, 130, 100, 150), img[70:170, 130:280])
        edge = s.read_region(0, -3, 400, 10, 30)  # outside: edge-replicated
        assert edge.shape == (10, 30, 3)
        assert np.array_equal(edge[3:, :20], img[:7, 400:420])
        assert np.array_equal(edge[0], edge[3]) and np.array_equal(edge[:, 25], edge[:, 19])
        if kind == "pyramid":
            assert s.levels == [(300, 420), (150, 210), (75, 105)]
            assert np.array_equal(s.read_region(1, 10, 20, 30, 40), img[::2, ::2][10:40, 20:60])


@pytest.mark.parametrize("zoom", [1.0, 0.5, 0.37, 1.6])
def test_read_at_has_one_global_grid(tmp_path: Path, zoom: float) -> None:
    """Two adjacent regions read at ``zoom`` equal one region over both (neighbouring
    windows line up exactly), and a linear ramp is sampled at the pixel centres."""
    yy, xx = np.mgrid[:400, :500]
    ramp = np.stack([(xx * 0.4) % 256, (yy * 0.5) % 256, np.full_like(xx, 100)], -1)
    img = ramp.astype(np.uint8)
    with open_slide(pyramid(tmp_path / "r.tif", img, tile=64)) as s:
        whole = s.read_at(zoom, 20, 30, 60, 80).astype(int)
        left = s.read_at(zoom, 20, 30, 60, 37).astype(int)
        right = s.read_at(zoom, 20, 67, 60, 43).astype(int)
        assert np.abs(np.concatenate([left, right], 1) - whole).max() <= 1
        # the red channel is 0.4 x level-0 column: output column c is centred on
        # level-0 (30 + c + 0.5) / zoom - 0.5 (levels are decimations of the ramp)
        c = np.arange(80)
        want = 0.4 * ((30 + c + 0.5) / zoom - 0.5)
        inner = slice(2, 70)
        assert np.abs(whole[30, inner, 0] - want[inner]).max() <= 1.5


def test_thumbnail_reads_bounded_blocks(tmp_path: Path, monkeypatch) -> None:
    """Without a pyramid the thumbnail is read block by block (never the whole level 0 at
    once), and equals the downscaled image."""
    img = disc_image(600, 800, [(300, 400, 100)], border=50)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, img, compression="zlib", rowsperstrip=32)
    sizes = []
    orig = ds.Slide.read_region

    def spy(self, level, y, x, h, w):
        sizes.append(h * w)
        return orig(self, level, y, x, h, w)

    monkeypatch.setattr(ds.Slide, "read_region", spy)
    with open_slide(path) as s:
        thumb, zoom = s.thumbnail(max_side=200, block=256)
    assert thumb.shape == (150, 200, 3) and zoom == pytest.approx(0.25)
    assert len(sizes) > 4 and max(sizes) <= (256 + 8) ** 2
    ref = np.asarray(Image.fromarray(img).resize((200, 150), Image.Resampling.BILINEAR))
    assert np.abs(thumb.astype(int) - ref).mean() < 2


def test_openslide_backend_reads_like_tifffile(tmp_path: Path) -> None:
    """With OpenSlide installed (the optional extra), a slide-format file goes through it
    and reads the same pixels, levels and resolution as tifffile."""
    if ds._openslide() is None:
        pytest.skip("openslide-python / openslide-bin not installed (pip install "
                    "'glandseg[slides]')")
    img = disc_image(600, 800, [(300, 400, 100)])
    tif = pyramid(tmp_path / "s.tif", img, mpp=0.5)
    svs = tmp_path / "s.svs"  # a generic tiled TIFF under a slide-format name
    svs.write_bytes(tif.read_bytes())
    with open_slide(svs) as a, open_slide(tif) as b:
        assert (a.kind, b.kind) == ("openslide", "tiff")
        assert a.levels == b.levels and a.mpp == b.mpp == 0.5
        for level, box in ((0, (100, 150, 200, 300)), (1, (10, 20, 50, 60))):
            assert np.array_equal(a.read_region(level, *box), b.read_region(level, *box))
        assert np.abs(a.read_at(0.3, 5, 7, 60, 80).astype(int)
                      - b.read_at(0.3, 5, 7, 60, 80)).max() <= 1
    assert is_large(svs) and image_pixels(svs) == (600, 800)


def test_large_png_header_and_load_limit(tmp_path: Path, monkeypatch) -> None:
    img = disc_image(90, 120, [(45, 60, 20)])
    path = tmp_path / "big.png"
    Image.fromarray(img).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's bomb check would refuse
    assert image_pixels(path) == (90, 120)
    with open_slide(path) as s:
        assert np.array_equal(s.read_region(0, 0, 0, 90, 120), img)
    with pytest.raises(GlandsegError, match="cannot be read by region.*pyramidal TIFF"):
        open_slide(path, max_bytes=1000)
    monkeypatch.setattr(ds, "LARGE_PIXELS", 100 * 100)
    assert is_large(path)
    monkeypatch.setattr(ds, "LARGE_PIXELS", 4096 * 4096)
    assert not is_large(path)


def test_unreadable_and_missing_files(tmp_path: Path, monkeypatch) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(GlandsegError, match="bad.tif"):
        open_slide(bad)
    with pytest.raises(GlandsegError, match="not found"):
        open_slide(tmp_path / "none.tif")
    mrxs = tmp_path / "x.mrxs"
    mrxs.write_bytes(b"not a slide")
    with pytest.raises(GlandsegError, match="x.mrxs: .*OpenSlide"):
        open_slide(mrxs)  # "does not recognise" with OpenSlide installed
    monkeypatch.setattr(ds, "_openslide", lambda: None)
    with pytest.raises(GlandsegError, match=r"x.mrxs: .*pip install 'glandseg\[slides\]'"):
        open_slide(mrxs)


# -- grid, tissue, stitching ------------------------------------------------------------

def test_window_grid_cores_tile_the_frame() -> None:
    wins = window_grid((700, 900), 256, 64)
    cover = np.zeros((700, 900), int)
    for w in wins:
        y0, x0, y1, x1 = w.core
        cover[y0:y1, x0:x1] += 1
        e = w.ext
        assert e[0] == max(0, y0 - 64) and e[3] == min(900, x1 + 64)
    assert (cover == 1).all() and len(wins) == 3 * 4
    with pytest.raises(GlandsegError, match="margin"):
        SlideConfig(core=256, margin=200)
    with pytest.raises(GlandsegError, match="core"):
        SlideConfig(core=100)


def test_tissue_mask_background_and_all_tissue() -> None:
    img = disc_image(200, 300, [(100, 150, 30)], border=60)
    m = tissue_mask(img, dilate=0)
    assert m[100, 150] and m[80, 100] and not m[10, 10] and not m[190, 290]
    full = np.zeros((50, 50, 3), np.uint8) + np.array([225, 160, 200], np.uint8)
    assert tissue_mask(full).all()  # all tissue stays tissue (Otsu clipped)


def test_tissue_mask_is_the_plain_float_recipe() -> None:
    """The fast tissue mask (saturation from a table, holes by one labelling) is exactly
    the plain recipe: float32 HSV saturation, Otsu, opening, ndi.binary_fill_holes,
    dilation; on tissue with lumens (holes), a lumen open to the glass, specks and noise."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    def plain(thumb: np.ndarray, dilate: int) -> np.ndarray:
        rgb = thumb.astype(np.float32) / 255.0
        mx, mn = rgb.max(axis=2), rgb.min(axis=2)
        sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
        t = float(threshold_otsu(sat)) if sat.size > 1 and np.ptp(sat) > 0 else 0.15
        mask = ndi.binary_opening(sat > min(max(t, 0.04), 0.15), iterations=1)
        mask = ndi.binary_fill_holes(mask)
        return ndi.binary_dilation(mask, iterations=dilate) if dilate > 0 else mask

    rng = np.random.default_rng(3)
    img = disc_image(300, 400, [(150, 200, 60), (60, 60, 25)], border=30)
    img[140:160, 190:210] = 250  # lumens: holes in the tissue
    img[100:104, 300:304] = 248
    img[0:200, 330:340] = 247  # a channel of glass from the edge: not a hole
    img[rng.integers(0, 300, 40), rng.integers(0, 400, 40)] = (200, 120, 180)  # specks
    noisy = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    grey = np.full((30, 40, 3), 128, np.uint8)
    for im in (img, noisy, grey, np.zeros((20, 30, 3), np.uint8)):
        for dilate in (0, 2):
            want = plain(im, dilate)
            assert np.array_equal(tissue_mask(im, dilate=dilate), want)
    assert tissue_mask(img, dilate=0)[150, 200] and not tissue_mask(img, dilate=0)[50, 335]


def test_seam_glands_whole_exactly_once(tmp_path: Path) -> None:
    """Discs across core seams (one across a corner of four cores, one wider than the
    margin) come out as one object each, identical to segmenting the whole image."""
    img = disc_image(800, 900, SEAM_DISCS)
    pred = stub_predictor()
    whole = pred.predict(img)
    with open_slide(pyramid(tmp_path / "s.tif", img)) as s:
        res = predict_slide(pred, s, tmp_path / "cache", config=SMALL, progress=False)
        lab = res.region(0, 0, 800, 900)
    assert res.stats.windows == 16 and res.n_glands == len(SEAM_DISCS) == whole.max()
    assert objects(lab) == objects(whole)
    assert sorted(np.unique(lab)[1:].tolist()) == list(range(1, len(SEAM_DISCS) + 1))
    # ids in the order of the glands' top-left corners; boxes and areas as painted
    g = res.glands
    assert (np.lexsort((g[:, 2], g[:, 1])) == np.arange(len(g))).all()
    for (gid, y0, x0, y1, x1), area in zip(g.tolist(), res.area.tolist(), strict=True):
        ys, xs = np.nonzero(lab == gid)
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)
        assert len(ys) == area


def test_without_matching_seam_glands_would_split(tmp_path: Path, monkeypatch) -> None:
    """The stitching is what joins them: with matching off, seam discs split in pieces."""
    img = disc_image(800, 900, SEAM_DISCS)
    monkeypatch.setattr(isl, "_match", lambda a, b, iou: [])
    with open_slide(pyramid(tmp_path / "s.tif", img)) as s:
        res = predict_slide(stub_predictor(), s, tmp_path / "c", config=SMALL, progress=False)
    assert res.n_glands > len(SEAM_DISCS)


def test_resume_from_finished_windows(tmp_path: Path) -> None:
    img = disc_image(800, 900, SEAM_DISCS)
    path = pyramid(tmp_path / "s.tif", img)
    with open_slide(path) as s:
        first = Counting()
        a = predict_slide(first, s, tmp_path / "cache", config=SMALL, progress=False)
        ref = a.region(0, 0, 800, 900)
        assert first.calls == a.stats.active == a.stats.predicted
        done = sorted(a.cache_dir.glob("w*.npz"))
        for p in done[::3]:  # "interrupted": a third of the windows never finished
            p.unlink()
        again = Counting()
        b = predict_slide(again, s, tmp_path / "cache", config=SMALL, progress=False)
        assert again.calls == len(done[::3]) == b.stats.predicted
        assert b.stats.resumed == len(done) - len(done[::3])
        assert np.array_equal(b.region(0, 0, 800, 900), ref)
        c = predict_slide(Counting(fail=True), s, tmp_path / "cache", config=SMALL,
                          progress=False)
        assert np.array_equal(c.region(0, 0, 800, 900), ref)
        # other settings → another cache key → predicted afresh
        other = Counting()
        predict_slide(other, s, tmp_path / "cache", config=SlideConfig(core=256, margin=32,
                      thumb_side=256), progress=False)
        assert other.calls > 0


def test_background_windows_are_skipped(tmp_path: Path) -> None:
    img = disc_image(800, 900, [(150, 150, 40)])
    img[300:, :] = 245  # no tissue below row 300
    img[:, 400:] = 245
    with open_slide(pyramid(tmp_path / "s.tif", img)) as s:
        pred = Counting()
        res = predict_slide(pred, s, tmp_path / "c", config=SMALL, progress=False)
    assert res.stats.windows == 16 and pred.calls == res.stats.active < 6
    assert res.n_glands == 1
    assert 0.05 < res.stats.tissue_mp < 0.2


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_label_chunks_read_back_like_the_array(tmp_path: Path, dtype) -> None:
    """The final labels cut into chunks (cores of 256 px in 3 x 3 chunks of 86 px, the
    frame's last cores smaller, empty chunks not stored) read back by region (0 outside the
    frame) and by sampled rows and columns (clipped) exactly as the array they came from."""
    from glandseg.infer.windows import LabelChunks

    rng = np.random.default_rng(1)
    H, W = 700, 610
    ref = np.zeros((H, W), np.uint32)
    top = 70000 if dtype == np.uint32 else 9
    ref[90:420, 40:330] = rng.integers(0, top, (330, 290))
    ref[600:700, 560:610] = top - 1  # in the smaller edge cores
    chunks = LabelChunks((H, W), 256, tmp_path, capacity=4, dtype=dtype, max_chunk=100)
    assert (chunks.k, chunks.chunk) == (3, 86)
    for w in window_grid((H, W), 256, 0):
        y0, x0, y1, x1 = w.core
        chunks.put(w.core, ref[y0:y1, x0:x1])
    padded = np.pad(ref, 300)
    boxes = [(0, 0, H, W), (-20, -30, 50, 60), (650, 580, 720, 640), (85, 255, 172, 258),
             (500, 0, 520, 10), (-10, -10, -5, 30)]
    boxes += [tuple(int(v) for v in (y, x, y + h, x + w)) for y, x, h, w in
              rng.integers([-40, -40, 1, 1], [H, W, 300, 300], (40, 4))]
    for y0, x0, y1, x1 in boxes:
        got = chunks.region(y0, x0, y1, x1)
        assert got.dtype == np.uint32 and np.array_equal(
            got, padded[y0 + 300:y1 + 300, x0 + 300:x1 + 300]), (y0, x0, y1, x1)
    assert chunks.decoded > 0
    before = chunks.decoded
    assert not chunks.region(450, 0, 590, 500).any() and chunks.decoded == before  # none stored
    for down in (1.0, 2.0, 3.0, 0.5, 1.7):
        rows = np.floor((np.arange(-3, int(H / down) + 3) + 0.5) * down).astype(np.int64)
        cols = np.floor((np.arange(-2, int(W / down) + 4) + 0.5) * down).astype(np.int64)
        want = ref[np.clip(rows, 0, H - 1)][:, np.clip(cols, 0, W - 1)]
        assert np.array_equal(chunks.sample(rows, cols), want), down
    rows, cols = np.sort(rng.integers(0, H, 77)), np.sort(rng.integers(0, W, 51))
    assert np.array_equal(chunks.sample(rows, cols), ref[rows][:, cols])
    assert chunks.sample(np.zeros(0, np.int64), cols).shape == (0, 51)

    def reads(seed: int) -> bool:  # two threads at once through one small cache
        r = np.random.default_rng(seed)
        for y, x, h, w in r.integers([0, 0, 1, 1], [H, W, 200, 200], (60, 4)).tolist():
            if not np.array_equal(chunks.region(y, x, y + h, x + w),
                                  padded[y + 300:y + h + 300, x + 300:x + w + 300]):
                return False
        return True

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(reads, range(4)))
    chunks.close()


def test_outputs_never_decode_the_windows_again(tmp_path: Path) -> None:
    """Once stitched, the outputs read the final labels' chunks, not the window cache."""
    img = disc_image(800, 900, SEAM_DISCS)
    with open_slide(pyramid(tmp_path / "s.tif", img)) as s:
        res = predict_slide(stub_predictor(), s, tmp_path / "c",
                            config=SlideConfig(core=512, margin=64, thumb_side=256, lru=2),
                            progress=False)
        loads = res.store.loads
        assert res.chunks.k == 1 and res.stats.active == 4
        rows = write_slide_outputs(tmp_path / "out", "s", res, None)
    assert res.store.loads == loads and len(rows) == len(SEAM_DISCS)
    res.remove_cache()
    assert not res.cache_dir.exists()


def test_outputs_error_stops_the_label_pyramid(tmp_path: Path, monkeypatch) -> None:
    """The label pyramid is written in a thread beside the GeoJSON: an error in the
    GeoJSON is the one reported, and the pyramid stops without leaving a file."""
    import glandseg.report.slide as rs

    img = disc_image(800, 900, SEAM_DISCS)
    with open_slide(pyramid(tmp_path / "s.tif", img)) as s:
        res = predict_slide(stub_predictor(), s, tmp_path / "c", config=SMALL, progress=False)

        def fail(*a, **k):
            raise GlandsegError("geojson failed")
        monkeypatch.setattr(rs, "write_geojson_and_rows", fail)
        with pytest.raises(GlandsegError, match="geojson failed"):
            write_slide_outputs(tmp_path / "out", "s", res, None)
    assert list((tmp_path / "out").iterdir()) == []


# -- other resolutions and outputs -------------------------------------------------------

def test_half_resolution_slide_outputs(tmp_path: Path) -> None:
    """A slide at 0.31 µm/px (a 2x upsampled image, resolution in its tags) is segmented
    at the model's 0.62: labels, GeoJSON and glands.csv come back in its own pixels."""
    img = disc_image(800, 900, SEAM_DISCS)
    big = np.repeat(np.repeat(img, 2, 0), 2, 1)
    pred = stub_predictor()
    whole = pred.predict(img)
    model_mpp = pred.mpp
    with open_slide(pyramid(tmp_path / "big.tif", big, mpp=model_mpp / 2)) as s:
        assert s.mpp == pytest.approx(model_mpp / 2)
        res = predict_slide(pred, s, tmp_path / "c", config=SMALL, progress=False)
        assert res.zoom == pytest.approx(0.5, abs=1e-3) and res.frame == (800, 900)
        assert objects(res.region(0, 0, 800, 900)) == objects(whole)
        rows = write_slide_outputs(tmp_path / "out", "big", res, res.mpp)
        level0 = res.level0(0, 0, 1600, 1800)
    with tifffile.TiffFile(tmp_path / "out" / "big.tif") as t:
        levels = t.series[0].levels
        assert [lv.shape for lv in levels][:2] == [(1600, 1800), (800, 900)]
        lab = levels[0].asarray()
        assert lab.dtype == np.uint32 and np.array_equal(lab, level0)
        assert np.array_equal(levels[1].asarray(), res.region(0, 0, 800, 900))
        assert t.pages[0].tags["ResolutionUnit"].value == 3  # centimetre
    # every gland is 4x its frame area; µm² from the slide's µm/px
    for row, area in zip(rows, res.area.tolist(), strict=True):
        assert row["area_px"] == pytest.approx(4 * area)
        assert row["area_um2"] == pytest.approx(4 * area * (model_mpp / 2) ** 2)
        ys, xs = np.nonzero(lab == row["gland_id"])
        assert row["centroid_x"] == pytest.approx(xs.mean(), abs=0.6)
        assert row["centroid_y"] == pytest.approx(ys.mean(), abs=0.6)
    gj = json.loads((tmp_path / "out" / "big.geojson").read_text())
    assert len(gj["features"]) == len(SEAM_DISCS)
    for f in gj["features"]:
        gid = int(f["properties"]["metadata"]["gland_id"])
        ring = np.asarray(f["geometry"]["coordinates"][0])
        ys, xs = np.nonzero(lab == gid)
        assert abs(ring[:, 0].min() - xs.min()) <= 2.5 and abs(ring[:, 0].max() - xs.max() - 1) <= 2.5
        assert abs(ring[:, 1].min() - ys.min()) <= 2.5
    ov = np.asarray(Image.open(tmp_path / "out" / "big_overlay.png"))
    assert ov.shape == (*res.thumbnail.shape[:2], 3)


def test_batch_sends_large_images_the_slide_way(tmp_path: Path, monkeypatch) -> None:
    """``predict_files`` (``glandseg predict``): a PNG over the size threshold and a
    pyramidal TIFF get ``<stem>.tif`` labels, GeoJSON, overlay and glands.csv rows; the
    window cache is removed; a re-run with skip keeps them."""
    monkeypatch.setattr(ds, "LARGE_PIXELS", 500 * 500)
    src = tmp_path / "in"
    src.mkdir()
    img = disc_image(800, 900, SEAM_DISCS)
    Image.fromarray(img).save(src / "plain.png")
    pyramid(src / "pyr.tif", disc_image(400, 500, [(200, 250, 40)]))
    Image.fromarray(img[:200, :200]).save(src / "small.png")
    monkeypatch.setattr(isl, "SlideConfig", lambda: SMALL)
    out = tmp_path / "out"
    paths = batch.collect_inputs([str(src)])
    rep = engine.predict_files(paths, out, stub_predictor(), mode="refuse", progress=False)
    assert rep.n_ok == 3 and not rep.failed
    names = {p.name for p in out.iterdir()}
    assert {"plain.tif", "plain.geojson", "plain_overlay.png", "pyr.tif", "pyr.geojson",
            "small.png", "glands.csv"} <= names and "plain.png" not in names
    assert not (out / ".glandseg" / "slides").exists()
    with open(out / "glands.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["image"] == "plain" for r in rows) == len(SEAM_DISCS)
    assert sum(r["image"] == "pyr" for r in rows) == 1
    lab = tifffile.imread(out / "plain.tif")
    assert objects(lab) == objects(stub_predictor().predict(img))
    again = engine.predict_files(paths, out, Counting(fail=True), mode="skip", progress=False)
    assert again.n_skipped == 3 and again.n_ok == 0
    with pytest.raises(GlandsegError, match="already exist"):
        batch.plan_outputs(paths, out, "refuse")


def test_interrupted_batch_resumes_its_slide(tmp_path: Path, monkeypatch) -> None:
    """A slide whose run dies after 5 windows is reported failed, its finished windows stay
    in ``<out>/.glandseg/slides/``; the next run predicts only the others."""
    monkeypatch.setattr(isl, "SlideConfig", lambda: SMALL)
    path = pyramid(tmp_path / "s.tif", disc_image(800, 900, SEAM_DISCS))

    class Dies(Counting):
        def predict(self, image, mpp=None):
            if self.calls == 5:
                raise GlandsegError("simulated crash")
            return super().predict(image, mpp=mpp)

    out = tmp_path / "out"
    rep = engine.predict_files([path], out, Dies(), progress=False)
    assert rep.failed and rep.n_ok == 0 and not (out / "s.tif").exists()
    assert len(list((out / ".glandseg" / "slides").rglob("w*.npz"))) == 5
    again = Counting()
    rep = engine.predict_files([path], out, again, progress=False)
    assert rep.n_ok == 1 and again.calls == 16 - 5
    lab = tifffile.imread(out / "s.tif")
    assert len(objects(lab)) == len(SEAM_DISCS)


# -- the bundled model on GlaS ----------------------------------------------------------

@pytest.mark.glas
@pytest.mark.slow
def test_glas_slide_agrees_with_whole_image(glas_dir: Path, tmp_path: Path) -> None:
    """Three GlaS training images of validation patients side by side as one pyramidal
    slide, cut into windows whose seams cross glands. The bundled model finds the same
    glands as on the whole mosaic (F1 ≥ 0.9 between the two), and against the annotations
    the slide way is not worse than the whole image (at most one gland fewer matched or one
    more false, object Dice within 0.03)."""
    from glandseg.data.io import read_image, read_label
    from glandseg.metrics.score import score_pairs

    stems = [f"train_{i}" for i in (15, 18, 5)]  # patients 4, 6, 11
    imgs = [read_image(next(glas_dir.glob(f"{s}.*"))) for s in stems]
    annos = [read_label(next(glas_dir.glob(f"{s}_anno.*"))) for s in stems]
    h = min(i.shape[0] for i in imgs)
    mosaic = np.concatenate([i[:h] for i in imgs], axis=1)
    parts, off = [], 0
    for a in annos:
        a = a[:h].astype(np.int32)
        parts.append(np.where(a > 0, a + off, 0))
        off = int(parts[-1].max())
    truth = np.concatenate(parts, axis=1)
    torch.set_num_threads(2)
    pred = Predictor.from_name("glas-unet", device="cpu")
    whole = pred.predict(mosaic)
    cfg = SlideConfig(core=768, margin=192, thumb_side=512)
    with open_slide(pyramid(tmp_path / "m.tif", mosaic, mpp=pred.mpp, tile=256)) as s:
        res = predict_slide(pred, s, tmp_path / "c", config=cfg, progress=False)
        lab = res.region(0, 0, *res.frame).astype(np.int32)
    assert res.stats.active >= 3 and lab.shape == whole.shape

    def pooled(a: np.ndarray, b: np.ndarray, split: bool = False) -> dict:
        return score_pairs([("mosaic", a, b)], split_gt=split)["other"]["pooled"]

    assert pooled(lab, whole)["f1"] >= 0.9
    s_slide, s_whole = pooled(lab, truth, True), pooled(whole, truth, True)
    # ~21 glands: one gland decided differently at a seam moves F1 by ~0.035, so the
    # detection figures may differ by one gland (glas-unet v4: 12 vs 13 matched), Dice by 0.03
    assert s_slide["tp"] >= s_whole["tp"] - 1, (s_slide, s_whole)
    assert s_slide["fp"] <= s_whole["fp"] + 1, (s_slide, s_whole)
    assert s_slide["object_dice"] >= s_whole["object_dice"] - 0.03, (s_slide, s_whole)


# -- scale-out ------------------------------------------------------------------------------

def test_process_pool_equals_serial(tmp_path: Path) -> None:
    """Windows as tasks of a process pool (batches of 4): the same labels as the serial
    run; the tasks write the cache, so a serial re-run predicts nothing."""
    from concurrent.futures import ProcessPoolExecutor

    img = disc_image(800, 900, SEAM_DISCS)
    with open_slide(pyramid(tmp_path / "s.tif", img)) as s:
        ref = predict_slide(stub_predictor(), s, tmp_path / "serial", config=SMALL,
                            progress=False).region(0, 0, 800, 900)
        with ProcessPoolExecutor(2) as pool:
            res = predict_slide(stub_predictor(), s, tmp_path / "pool", config=SMALL,
                                progress=False, client=pool, threads=1)
        assert res.stats.predicted == res.stats.active
        assert np.array_equal(res.region(0, 0, 800, 900), ref)
        again = predict_slide(Counting(fail=True), s, tmp_path / "pool", config=SMALL,
                              progress=False)
        assert np.array_equal(again.region(0, 0, 800, 900), ref)


@pytest.mark.slow
def test_dask_local_cluster_equals_serial(tmp_path: Path, monkeypatch) -> None:
    """``glandseg predict`` over a folder of slides on a Dask LocalCluster of 2 workers:
    outputs identical to the serial run's."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(isl, "SlideConfig", lambda: SMALL)
    src = tmp_path / "in"
    src.mkdir()
    pyramid(src / "a.tif", disc_image(800, 900, SEAM_DISCS))
    pyramid(src / "b.tif", disc_image(500, 600, [(250, 256, 60), (100, 400, 30)], seed=3))
    paths = batch.collect_inputs([str(src)])
    serial = engine.predict_files(paths, tmp_path / "serial", stub_predictor(), progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        rep = engine.predict_files(paths, tmp_path / "dask", stub_predictor(), progress=False,
                                  client=client)
    assert rep.n_ok == serial.n_ok == 2 and rep.n_glands == serial.n_glands
    for name in ("a.geojson", "b.geojson", "glands.csv"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()
    for name in ("a.tif", "b.tif"):  # the OME-XML differs (a UUID): compare the pixels
        with tifffile.TiffFile(tmp_path / "dask" / name) as d, \
                tifffile.TiffFile(tmp_path / "serial" / name) as s:
            for ld, ls in zip(d.series[0].levels, s.series[0].levels, strict=True):
                assert np.array_equal(ld.asarray(), ls.asarray())


@pytest.mark.glas
def test_cli_predict_slide_with_bundled_model(glas_dir: Path, tmp_path: Path) -> None:
    """``glandseg predict SLIDE.tif --out DIR`` with the bundled model: one window, the
    slide outputs and glands.csv rows; ``--workers`` and ``--dask-scheduler`` exclude
    each other."""
    from glandseg.cli import main
    from glandseg.data.io import read_image

    img = read_image(next(glas_dir.glob("train_15.*")))[:400, :600]
    path = pyramid(tmp_path / "slide.tif", img, mpp=0.62005)
    out = tmp_path / "out"
    assert main(["predict", str(path), "--out", str(out), "--device", "cpu"]) == 0
    assert {"slide.tif", "slide.geojson", "slide_overlay.png", "glands.csv"} <= {
        p.name for p in out.iterdir()}
    lab = tifffile.imread(out / "slide.tif")
    with open(out / "glands.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert lab.shape == (400, 600) and len(rows) == len(np.unique(lab)) - 1 > 0
    with pytest.raises(SystemExit):
        main(["predict", str(path), "--out", str(out), "--workers", "2",
              "--dask-scheduler", "tcp://127.0.0.1:8786"])


def test_one_union_find_for_windows_and_tiles() -> None:
    """The slide stitching and the Mask R-CNN tile stitching share one union-find: pairs
    best first, never two items of one window in a group."""
    from glandseg.infer.stitch import union_by_window

    # items 0, 1 in window 0; 2 in window 1; 3 in window 2
    roots = union_by_window([0, 0, 1, 2], [(0.9, 0, 2), (0.8, 1, 2), (0.7, 2, 3)])
    assert roots[0] == roots[2] == roots[3] and roots[1] != roots[0]
    assert union_by_window([0, 1], []) == [0, 1]


def test_the_slide_cache_key_keeps_its_model_id() -> None:
    """model_id is the one fingerprint module's config_fingerprint (caches stay valid)."""
    import hashlib

    from glandseg.infer.windows import model_id
    from glandseg.models.fingerprint import config_fingerprint

    class P:
        config = {"model": "unet", "postprocess": {"min_area": 5}}
        fingerprint = "ab" * 32

    old = hashlib.sha256(json.dumps(P.config, sort_keys=True, default=str).encode())
    old.update(P.fingerprint.encode())
    assert model_id(P()) == config_fingerprint(P.config, P.fingerprint) == old.hexdigest()


@pytest.mark.parametrize("kw,want", [
    ({"resolution": (40000, 40000), "resolutionunit": 3}, 0.25),  # 40000 px/cm
    ({"description": "Aperio Image Library v12 |MPP = 0.4990|AppMag = 20"}, 0.499),
    ({"resolution": (72, 72), "resolutionunit": 2}, None),  # 72 dpi: not a microscope
])
def test_one_mpp_reader_for_images_and_slides(tmp_path: Path, kw: dict, want) -> None:
    """data.io.read_mpp and an opened slide read a TIFF's resolution by one rule."""
    from glandseg.data.io import read_mpp

    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb", **kw)
    mpp, _ = read_mpp(path)
    with open_slide(path) as s:
        assert s.mpp == mpp
    assert mpp == (pytest.approx(want) if want else None)
