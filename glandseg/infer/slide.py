"""Whole-slide (and large-image) inference with memory bounded by the window, not the slide.

:func:`predict_slide` segments a :class:`~glandseg.data.slide.Slide` at the model's
resolution (``predictor.mpp``; the slide's own from ``input_mpp``, the predictor's
``input_mpp``, the file's metadata, else the model's, said once):

1. **Frame and tissue.** The *frame* is the slide at the model's resolution
   (``zoom`` = slide µm/px / model µm/px, model px per level-0 px). A thumbnail (longer side
   ``thumb_side``) gives the tissue mask (:func:`tissue_mask`: Otsu on the HSV saturation,
   holes filled, slightly dilated).
2. **Windows.** The frame is cut into square *cores* of ``core`` px; each window is its core
   plus ``margin`` px of context on every side. Only windows that touch tissue are run.
3. **Predict.** Each window is read at the frame's resolution
   (:meth:`~glandseg.data.slide.Slide.read_at`, from the best pyramid level) and segmented
   by ``predictor.predict`` (its own tiling, blending and post-processing inside the
   window). Its label image (``uint16``/``uint32`` ``(h, w)``, 0 = background) is saved
   in the cache folder ``work_dir/<key>/`` (key: slide file, model weights and settings),
   so an interrupted slide resumes from its finished windows. A progress bar (tqdm) shows
   windows done and the ETA.
4. **Stitch.** Every pixel belongs to exactly one core and takes the label its own window
   gives it. The labels of two neighbouring windows (also diagonal) are matched by their IoU
   inside the region both windows see (``match_iou``); matched labels are one gland
   (union-find; two labels of one window are never merged, as in
   :mod:`glandseg.infer.stitch`). So a gland across a core seam comes out whole, with one
   id, exactly once. Glands whose painted area is below the model's ``min_area`` are
   dropped (slivers). Ids are ``1..N`` in the order of the glands' top-left corners.

**Modules.** Windows, tissue and the cache: :mod:`glandseg.infer.windows`; running the
windows here or as tasks: :mod:`glandseg.infer.parallel`; the union-find of the stitching
is :func:`glandseg.infer.stitch.union_by_window` (shared with Mask R-CNN tiles).

**Scale-out.** With ``client`` (a Dask ``distributed.Client``, e.g. from
:func:`dask_client`: ``--dask-scheduler ADDRESS`` or a ``LocalCluster`` of ``--workers N``;
or a ``concurrent.futures`` executor), step 3 runs as tasks of 4 windows each
(:func:`predict_window_batch`, which writes the same cache files), and steps 1, 2 and 4
stay here: the result is identical to the serial run's.

The result, :class:`SlideLabels`, reads the final label image by region
(:meth:`SlideLabels.region`) from compressed chunks of it written once after the stitching
(:class:`~glandseg.infer.windows.LabelChunks`: each window decoded once more, its cores cut
into chunks of at most 512² px), so the outputs (label pyramid, GeoJSON, ``glands.csv``,
overlay: :mod:`glandseg.report.slide`) are also written region by region, decoding only
the chunks they touch.
Peak memory is a few windows (``(core + 2 margin)²`` px) plus the model, whatever the size
of the slide; there is never a full-resolution canvas.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

from glandseg import GlandsegError
from glandseg.data.slide import Slide, open_slide
from glandseg.infer.parallel import (
    dask_client,
    predict_window_batch,
    predict_windows,
)
from glandseg.infer.stitch import union_by_window
from glandseg.infer.windows import (
    MAX_CHUNK,
    LabelChunks,
    Window,
    WindowStore,
    active_windows,
    cache_key,
    intersect,
    local,
    model_id,
    model_mpp,
    tissue_mask,
    window_grid,
)

log = logging.getLogger(__name__)

#: Re-exported: the windows (:mod:`glandseg.infer.windows`) and their parallel execution
#: (:mod:`glandseg.infer.parallel`) as parts of the slide pipeline.
__all__ = ["MAX_ALIGNED_TILE", "SlideConfig", "SlideLabels", "SlideStats", "Window",
           "dask_client", "model_id", "predict_slide", "predict_window_batch",
           "slide_resolution", "tissue_mask", "window_grid", "window_predictor"]


@dataclass(frozen=True)
class SlideConfig:
    """Whole-slide settings, in px at the model's resolution.

    ``core``: side of the square region each window owns (256-8192); ``margin``: context on
    each side of a core (0 to ``core / 2``; it should exceed the radius of large glands);
    ``match_iou``: IoU (within the region two windows share) above which their labels are
    one gland, in (0, 1]; ``thumb_side``: longer side of the thumbnail used for the tissue
    mask and the overlay (256-16384); ``tissue``: skip windows without tissue;
    ``lru``: windows kept decoded while stitching, and as many windows' worth of chunks
    of the final labels when reading the result back (2-64); ``aligned_tiles``:
    cut each window into the fewest equal tiles of at most :data:`MAX_ALIGNED_TILE` px that
    cover it exactly (a 2560² window: 2 x 2 tiles of 1344², overlapping by the model's
    overlap) instead of the model's own tile grid (9 tiles of 1024², 9.4 MP for a 6.6 MP
    window); ``None`` = auto: on the ONNX backend (dense models only).
    """

    core: int = 2048
    margin: int = 256
    match_iou: float = 0.4
    thumb_side: int = 2048
    tissue: bool = True
    lru: int = 6
    aligned_tiles: bool | None = None

    def __post_init__(self) -> None:
        def bad(key: str, rng: str, v: object) -> GlandsegError:
            return GlandsegError(f"slide settings: {key} must be {rng}, got {v!r}")
        for key, lo, hi in (("core", 256, 8192), ("thumb_side", 256, 16384), ("lru", 2, 64)):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise bad(key, f"an integer in [{lo}, {hi}]", v)
        if (not isinstance(self.margin, int) or isinstance(self.margin, bool)
                or not 0 <= self.margin <= self.core // 2):
            raise bad("margin", f"an integer in [0, core / 2 = {self.core // 2}]", self.margin)
        if not (isinstance(self.match_iou, int | float) and 0 < self.match_iou <= 1):
            raise bad("match_iou", "a number in (0, 1]", self.match_iou)
        if not isinstance(self.tissue, bool):
            raise bad("tissue", "true or false", self.tissue)
        if self.aligned_tiles is not None and not isinstance(self.aligned_tiles, bool):
            raise bad("aligned_tiles", "true, false or null (auto)", self.aligned_tiles)




















@dataclass
class SlideStats:
    """What a slide run did: sizes, windows, tissue, times (s)."""

    frame: tuple[int, int] = (0, 0)
    windows: int = 0
    active: int = 0
    predicted: int = 0
    resumed: int = 0
    tissue_mp: float = 0.0  # tissue megapixels at the model's resolution
    predict_s: float = 0.0
    stitch_s: float = 0.0
    glands: int = 0


@dataclass
class SlideLabels:
    """A segmented slide: the final label image, read by region from the window cache.

    ``frame``: ``(H, W)`` at the model's resolution; ``zoom``: frame px per level-0 px;
    ``mpp``: the slide's level-0 µm/px, ``model_mpp``: the frame's; ``shape``: level-0
    ``(H, W)``; ``glands``: ``int64 (N, 5)`` rows ``(id, y0, x0, y1, x1)`` (frame bounding
    boxes, ids ``1..N`` in order); ``area``: ``int64 (N,)`` frame px per gland;
    ``thumbnail`` ``uint8 (h, w, 3)`` at ``thumb_zoom`` (per level-0 px) and its
    ``tissue`` mask ``bool (h, w)``; ``chunks``: the final labels
    (:class:`~glandseg.infer.windows.LabelChunks`, read by :meth:`region` and
    :meth:`sample`); ``luts``: per window, its label → final id (``uint32``). Labels:
    ``uint32``, 0 = background.
    """

    frame: tuple[int, int]
    zoom: float
    mpp: float
    model_mpp: float
    shape: tuple[int, int]
    windows: list[Window]
    luts: dict[int, np.ndarray]
    glands: np.ndarray
    area: np.ndarray
    thumbnail: np.ndarray
    thumb_zoom: float
    tissue: np.ndarray
    store: WindowStore
    cache_dir: Path
    chunks: LabelChunks
    stats: SlideStats = field(default_factory=SlideStats)
    core: int = 2048

    @property
    def n_glands(self) -> int:
        return len(self.glands)

    def region(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Final labels ``uint32 (y1 - y0, x1 - x0)`` of a frame box (0 outside the frame)."""
        return self.chunks.region(y0, x0, y1, x1)

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Labels at frame indices ``rows (h,)`` x ``cols (w,)`` (each non-decreasing):
        ``uint32 (h, w)`` (nearest-neighbour resampling for other resolutions). Read chunk
        by chunk, so a coarse grid over the whole slide never builds the full frame."""
        return self.chunks.sample(rows, cols)

    def level0(self, y: int, x: int, h: int, w: int, down: float = 1.0) -> np.ndarray:
        """Labels ``uint32 (h, w)`` of the slide at ``down`` level-0 px per px (1 = the
        slide's full resolution), from ``(y, x)`` of that grid: the frame pixel under each
        pixel centre."""
        rows = np.floor((np.arange(y, y + h) + 0.5) * down * self.zoom).astype(np.int64)
        cols = np.floor((np.arange(x, x + w) + 0.5) * down * self.zoom).astype(np.int64)
        return self.sample(rows, cols)

    def gland_masks(self) -> Iterator[tuple[int, np.ndarray, tuple[int, int]]]:
        """``(id, bool mask (h, w), (y0, x0))`` per gland in id order, frame coordinates."""
        for gid, y0, x0, y1, x1 in self.glands.tolist():
            yield gid, self.region(y0, x0, y1, x1) == gid, (y0, x0)

    def remove_cache(self) -> None:
        """Delete the window cache and the final labels (after the outputs are written)."""
        import shutil

        self.chunks.close()
        shutil.rmtree(self.cache_dir, ignore_errors=True)




_ASSUMED_SAID = False  # the assumed resolution is said once per process


def slide_resolution(predictor, slide: Slide, input_mpp: float | None = None
                     ) -> tuple[float, str]:
    """``(level-0 µm/px, where from)``: ``input_mpp``, else the predictor's ``input_mpp``,
    else the slide's metadata, else the model's (a warning, once per process)."""
    if input_mpp is not None:
        return float(input_mpp), "given"
    if getattr(predictor, "input_mpp", None) is not None:
        return float(predictor.input_mpp), "--input-mpp"
    if slide.mpp is not None:
        return float(slide.mpp), slide.mpp_source
    mpp = model_mpp(predictor)
    global _ASSUMED_SAID
    say = log.debug if _ASSUMED_SAID else log.warning
    _ASSUMED_SAID = True
    say("%s: resolution unknown (%s): assuming the model's %.4g µm/px; pass --input-mpp "
        "(e.g. 0.25 for a 40x scan) if it differs. Said once for all slides of unknown "
        "resolution.", slide.path, slide.mpp_source, mpp)
    return mpp, "assumed (the model's)"


def _zoom(predictor, mpp: float) -> float:
    z = getattr(predictor, "zoom", None)
    if callable(z):
        return float(z(mpp))
    return mpp / model_mpp(predictor)




















def _match(a: np.ndarray, b: np.ndarray, iou_min: float
           ) -> list[tuple[float, int, int]]:
    """Label pairs ``(iou, label of a, label of b)`` of two label crops of one region with
    IoU ≥ ``iou_min``."""
    m = (a > 0) & (b > 0)
    if not m.any():
        return []
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    key = a[m].astype(np.int64) * nb + b[m]
    uk, inter = np.unique(key, return_counts=True)
    la, lb = uk // nb, uk % nb
    area_a = np.bincount(a.ravel(), minlength=na)
    area_b = np.bincount(b.ravel(), minlength=nb)
    iou = inter / (area_a[la] + area_b[lb] - inter)
    keep = iou >= iou_min
    return [(float(v), int(x), int(y)) for v, x, y in zip(iou[keep], la[keep], lb[keep],
                                                           strict=True)]


def _stitch(windows: list[Window], active: list[Window], store: WindowStore,
            cfg: SlideConfig, min_area: int
            ) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Match labels across neighbouring windows; returns ``(luts, glands, area)`` (see
    :class:`SlideLabels`)."""
    index = {(w.row, w.col): w for w in active}
    offset: dict[int, int] = {}
    nlab: dict[int, int] = {}
    total = 0
    areas: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    pairs: list[tuple[float, int, int]] = []
    for w in active:
        lab = store.get(w.index)
        n = int(lab.max()) if lab.size else 0
        offset[w.index], nlab[w.index] = total, n
        total += n
        core = lab[local(w.core, w.ext)]
        areas.append(np.bincount(core.ravel(), minlength=n + 1)[1:n + 1].astype(np.int64))
        bb = np.zeros((n, 4), np.int64)
        for k, sl in enumerate(ndi.find_objects(core, max_label=n)):
            if sl is not None:
                bb[k] = (sl[0].start + w.core[0], sl[1].start + w.core[1],
                         sl[0].stop + w.core[0], sl[1].stop + w.core[1])
        boxes.append(bb)
        for dr, dc in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
            nb = index.get((w.row + dr, w.col + dc))
            if nb is None:
                continue
            shared = intersect(w.ext, nb.ext)
            if shared is None:
                continue
            a = lab[local(shared, w.ext)]
            b = store.get(nb.index)[local(shared, nb.ext)]
            for iou, la, lb in _match(a, b, cfg.match_iou):
                pairs.append((iou, offset[w.index] + la, offset[nb.index] + lb))
    area = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    box = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int64)
    # union-find over global label ids 1..total (index gid - 1), never two of one window
    win_of = np.zeros(total, np.int64)
    for w in active:
        win_of[offset[w.index]:offset[w.index] + nlab[w.index]] = w.index
    ordered = sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))
    roots = np.array(union_by_window(win_of, [(v, a - 1, b - 1) for v, a, b in ordered]),
                     np.int64)
    g_area = np.bincount(roots, weights=area, minlength=total).astype(np.int64)
    big = np.iinfo(np.int64).max
    g_box = np.stack([np.full(total, big), np.full(total, big), np.full(total, -1),
                      np.full(total, -1)], axis=1)
    painted = area > 0
    for col, fn in ((0, np.minimum), (1, np.minimum), (2, np.maximum), (3, np.maximum)):
        fn.at(g_box[:, col], roots[painted], box[painted, col])
    keep = np.flatnonzero((g_area > 0) & (g_area >= max(1, min_area)))
    order = keep[np.lexsort((keep, g_box[keep, 1], g_box[keep, 0]))]
    final = np.zeros(total, np.int64)
    final[order] = np.arange(1, len(order) + 1)
    luts = {}
    for w in active:
        o, n = offset[w.index], nlab[w.index]
        lut = np.zeros(n + 1, np.uint32)
        lut[1:] = final[roots[o:o + n]]
        luts[w.index] = lut
    glands = np.column_stack([np.arange(1, len(order) + 1), g_box[order]]).astype(np.int64)
    return luts, glands.reshape(-1, 5), g_area[order]


def _final_chunks(frame: tuple[int, int], active: list[Window], store: WindowStore,
                  luts: dict[int, np.ndarray], n_glands: int, cfg: SlideConfig,
                  folder: Path) -> LabelChunks:
    """The final labels of every active core (each window's labels through its lut) as
    :class:`LabelChunks` in ``folder``; the store's decoded windows are freed after."""
    dtype = np.uint16 if n_glands < 65536 else np.uint32
    k = math.ceil(cfg.core / MAX_CHUNK)  # chunks per core side
    chunks = LabelChunks(frame, cfg.core, folder, cfg.lru * k * k, dtype)
    for w in reversed(active):  # the stitching's last windows are still decoded
        lut = luts[w.index]
        if not lut.any():
            continue
        labels = store.get(w.index)
        chunks.put(w.core, lut.astype(dtype)[labels[local(w.core, w.ext)]])
    store.clear()
    return chunks


#: Largest tile side of :attr:`SlideConfig.aligned_tiles` (px): ONNX Runtime needs ~0.7 GB
#: for a 1344² pass of unet-lite0, ~2.5 GB for a whole 2560² window.
MAX_ALIGNED_TILE = 1536


def window_predictor(predictor, cfg: SlideConfig):
    """The predictor that segments windows: ``predictor`` itself, or (``cfg.aligned_tiles``,
    auto on the ONNX backend) a shallow copy whose tiles cover each window exactly."""
    aligned = cfg.aligned_tiles
    if aligned is None:
        aligned = getattr(getattr(predictor, "backend", None), "name", "") == "onnx"
    if not aligned or predictor.task == "instances":
        return predictor
    ext = cfg.core + 2 * cfg.margin
    t = predictor.tiling
    k = math.ceil(ext / MAX_ALIGNED_TILE)
    tile = min(8192, 32 * math.ceil(math.ceil((ext + (k - 1) * t.overlap) / k) / 32))
    if tile == t.tile:
        return predictor
    one = copy.copy(predictor)
    one.tiling = type(t)(tile=tile, overlap=min(t.overlap, tile // 2), batch_size=1)
    return one


def predict_slide(predictor, slide: Slide | str | os.PathLike, work_dir: str | os.PathLike,
                  input_mpp: float | None = None, config: SlideConfig | None = None,
                  progress: bool = True, client=None, threads: int | None = None
                  ) -> SlideLabels:
    """Segment a whole slide or large image (see the module doc) → :class:`SlideLabels`.

    ``predictor``: a :class:`~glandseg.infer.predictor.Predictor` (dense or instance
    model); ``slide``: an open :class:`Slide` or a path (opened with
    :func:`~glandseg.data.slide.open_slide`; it must stay open while the result is read);
    ``work_dir``: folder of the resumable window cache (a sub-folder per slide/model/settings
    key); ``input_mpp``: the slide's level-0 µm/px if known better than its metadata.
    ``client``: run the windows as tasks (batches of 4) on a Dask ``distributed.Client``
    (or a ``concurrent.futures`` executor); the workers must see the slide and
    ``work_dir`` (one machine, or a shared filesystem). The result is identical to the
    serial run (each window is computed alone; stitching stays here). ``threads``: torch
    threads per task.
    """
    cfg = config or SlideConfig()
    predictor = window_predictor(predictor, cfg)
    if not isinstance(slide, Slide):
        slide = open_slide(slide)
    mpp, source = slide_resolution(predictor, slide, input_mpp)
    zoom = _zoom(predictor, mpp)
    H0, W0 = slide.shape
    frame = (max(1, round(H0 * zoom)), max(1, round(W0 * zoom)))
    log.info("%s: %dx%d px at %.4g µm/px (%s) → %dx%d px at the model's %.4g µm/px",
             slide.path, W0, H0, mpp, source, frame[1], frame[0], model_mpp(predictor))
    thumb, tz = slide.thumbnail(cfg.thumb_side)
    tissue = tissue_mask(thumb) if cfg.tissue else np.ones(thumb.shape[:2], bool)
    windows = window_grid(frame, cfg.core, cfg.margin)
    active = active_windows(windows, tissue if cfg.tissue else None, tz, zoom)
    key = cache_key(predictor, slide, mpp, zoom, cfg)
    cache = Path(work_dir) / key
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GlandsegError(f"{cache}: cannot create the window cache ({exc})") from exc
    (cache / "settings.json").write_text(json.dumps(
        {"slide": str(slide.path), "mpp": mpp, "mpp_source": source, "zoom": zoom,
         "config": asdict(cfg)}, indent=1) + "\n", encoding="utf-8")
    store = WindowStore(cache, windows, cfg.lru)
    todo = [w for w in active if not store.path(w.index).is_file()]
    stats = SlideStats(frame=frame, windows=len(windows), active=len(active),
                       predicted=len(todo), resumed=len(active) - len(todo),
                       tissue_mp=float(tissue.sum()) / (tz * tz) * zoom * zoom / 1e6)
    if stats.resumed:
        log.info("%s: resuming, %d of %d windows already done", slide.path, stats.resumed,
                 len(active))
    t0 = time.perf_counter()
    with tqdm(total=len(active), initial=stats.resumed, unit="win", desc=slide.path.stem,
              disable=None if progress else True, smoothing=0.1) as bar:
        predict_windows(predictor, slide, zoom, todo, store, bar, client=client,
                         threads=threads)
    stats.predict_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    min_area = int(getattr(predictor.model_config.postprocess, "min_area", 0) or 0)
    luts, glands, area = _stitch(windows, active, store, cfg, min_area)
    chunks = _final_chunks(frame, active, store, luts, len(glands), cfg, cache)
    stats.stitch_s = time.perf_counter() - t0
    stats.glands = len(glands)
    return SlideLabels(frame=frame, zoom=zoom, mpp=mpp, model_mpp=model_mpp(predictor),
                       shape=(H0, W0), windows=windows, luts=luts, glands=glands, area=area,
                       thumbnail=thumb, thumb_zoom=tz, tissue=tissue, store=store,
                       cache_dir=cache, chunks=chunks, stats=stats, core=cfg.core)
