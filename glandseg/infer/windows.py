"""Windows of a whole slide and their resumable cache (:func:`glandseg.infer.slide.predict_slide`).

The *frame* is the slide at the model's resolution, cut into square cores of ``core`` px,
each window its core plus ``margin`` px of context (:func:`window_grid`); only windows
touching tissue run (:func:`tissue_mask`, :func:`active_windows`). Each window's label
image (``uint16``/``uint32`` ``(h, w)``, 0 = background) is saved as ``<name>.npz`` in a
cache folder named by :func:`cache_key` (slide file, model, settings), read back through
:class:`WindowStore` (the last few decoded). Once stitched, the final label image is kept
as :class:`LabelChunks` (the cores cut into compressed chunks of at most 512² px, decoded
one chunk at a time), so the outputs read any region in any order without decoding whole
windows again. Boxes are ``(y0, x0, y1, x1)``, end exclusive, in frame px.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from glandseg import GlandsegError, __version__
from glandseg.data.slide import Slide
from glandseg.infer.postprocess import fill_mask_holes
from glandseg.models.config import GLAS_MPP
from glandseg.models.fingerprint import config_fingerprint

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive), frame px


CACHE_VERSION = 1
#: Largest side of a :class:`LabelChunks` chunk (px).
MAX_CHUNK = 512


@dataclass(frozen=True)
class Window:
    """One window of the grid: ``core`` (the pixels it owns) inside ``ext`` (what it sees),
    both frame boxes ``(y0, x0, y1, x1)``."""

    index: int
    row: int
    col: int
    core: Box
    ext: Box

    @property
    def name(self) -> str:
        return f"w{self.row:04d}_{self.col:04d}"


def window_grid(shape: tuple[int, int], core: int, margin: int) -> list[Window]:
    """Windows over a frame of ``shape = (H, W)``, row-major: cores ``core``² (smaller at
    the right and bottom edges) tile the frame; each ``ext`` is the core grown by ``margin``
    and clipped to the frame."""
    H, W = shape
    rows, cols = max(1, math.ceil(H / core)), max(1, math.ceil(W / core))
    out = []
    for r in range(rows):
        for c in range(cols):
            y0, x0 = r * core, c * core
            y1, x1 = min(H, y0 + core), min(W, x0 + core)
            ext = (max(0, y0 - margin), max(0, x0 - margin), min(H, y1 + margin),
                   min(W, x1 + margin))
            out.append(Window(len(out), r, c, (y0, x0, y1, x1), ext))
    return out


def intersect(a: Box, b: Box) -> Box | None:
    y0, x0, y1, x1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def local(box: Box, origin: Box) -> tuple[slice, slice]:
    return slice(box[0] - origin[0], box[2] - origin[0]), slice(box[1] - origin[1],
                                                                 box[3] - origin[1])


@functools.cache
def _SATURATION() -> np.ndarray:  # noqa: N802 (a constant, made once)
    """HSV saturation ``float32 (256, 256)`` of an RGB pixel by its ``(max, min)`` channel
    value, computed as on float32 RGB in [0, 1] (the same float32 values)."""
    v = np.arange(256, dtype=np.float32) / 255.0
    mx, mn = v[:, None], v[None, :]
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)


def tissue_mask(thumb: np.ndarray, dilate: int = 2) -> np.ndarray:
    """Tissue of an RGB thumbnail ``uint8 (h, w, 3)`` → ``bool (h, w)``.

    Background of a scan is bright and grey (low HSV saturation); stained tissue is
    coloured. Threshold: Otsu on the saturation, kept within [0.04, 0.15] (so an image that
    is all tissue, or all background, is not split in two); then small specks removed,
    holes (lumens) filled and the mask grown by ``dilate`` px.
    """
    from skimage.filters import threshold_otsu

    r, g, b = (np.asarray(thumb[..., i], np.uint8) for i in range(3))
    sat = _SATURATION()[np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)]
    t = float(threshold_otsu(sat)) if sat.size > 1 and np.ptp(sat) > 0 else 0.15
    mask = sat > min(max(t, 0.04), 0.15)
    mask = ndi.binary_opening(mask, iterations=1)
    mask = fill_mask_holes(mask)
    if dilate > 0:
        mask = ndi.binary_dilation(mask, iterations=dilate)
    return mask


def model_id(predictor) -> str:
    """The model's config and weights (:func:`glandseg.models.fingerprint.config_fingerprint`
    of ``predictor.config`` and ``predictor.fingerprint``): identifies the model in the
    window cache and, beside the weights fingerprint, in ``settings.json``. An int8 graph
    (``--precision int8``) gives other labels: its id differs."""
    fp = predictor.fingerprint
    if getattr(getattr(predictor, "backend", None), "precision", "fp32") != "fp32":
        fp = f"{fp}:{predictor.backend.precision}"
    return config_fingerprint(predictor.config, fp)


def save_labels(path: Path, labels: np.ndarray) -> None:
    """Window labels → ``path`` (npz, smallest unsigned dtype), atomically."""
    dt = np.uint16 if labels.size == 0 or labels.max() < 65536 else np.uint32
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, labels=labels.astype(dt))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_labels(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return z["labels"]


class WindowStore:
    """Window label images from the cache folder, the last ``capacity`` kept decoded."""

    def __init__(self, folder: Path, windows: list[Window], capacity: int) -> None:
        self.folder, self.windows, self.capacity = folder, windows, capacity
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self.loads = 0

    def path(self, i: int) -> Path:
        return self.folder / f"{self.windows[i].name}.npz"

    def get(self, i: int) -> np.ndarray:
        a = self._lru.get(i)
        if a is not None:
            self._lru.move_to_end(i)
            return a
        try:
            a = load_labels(self.path(i))
        except Exception as exc:
            raise GlandsegError(f"{self.path(i)}: cached window unreadable ({exc}); delete "
                                f"{self.folder} and run again") from exc
        self.loads += 1
        self._lru[i] = a
        while len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
        return a

    def clear(self) -> None:
        """Forget the decoded windows (their memory is freed)."""
        self._lru.clear()


def _runs(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` (``int64 (n,)``, n ≥ 1) as a slice when it is an arithmetic progression with
    a positive step (a view instead of a gather), else itself."""
    if len(idx) == 1:
        return slice(int(idx[0]), int(idx[0]) + 1)
    step = int(idx[1] - idx[0])
    if step > 0 and np.array_equal(np.diff(idx), np.full(len(idx) - 1, step)):
        return slice(int(idx[0]), int(idx[-1]) + 1, step)
    return idx


class LabelChunks:
    """The final label image of a frame (``uint32`` when read, 0 = background), on disk
    in chunks: each core of the window grid (``core`` px, :func:`window_grid`) is cut into
    ``k × k`` chunks of ``chunk = ceil(core / k)`` px (``k = ceil(core / max_chunk)``; the
    last ones smaller at the frame's edges), each stored zlib-compressed alone in an
    anonymous temporary file in ``folder`` (gone when closed); chunks without a gland are
    not stored. :meth:`region` and :meth:`sample` decode only the chunks they touch, the
    last ``capacity`` kept decoded, so glands read in any order, or a pyramid written tile
    by tile, decode each chunk about once and memory stays a few chunks, whatever the size
    of the slide. ``dtype``: the stored dtype (``uint16`` when the ids fit, else ``uint32``).
    Reading is thread-safe (the outputs write the label pyramid in a thread while the
    GeoJSON reads glands); :meth:`put` is not (one writer, before any reading).
    """

    def __init__(self, frame: tuple[int, int], core: int, folder: Path, capacity: int,
                 dtype=np.uint32, max_chunk: int = MAX_CHUNK) -> None:
        self.frame, self.core, self.capacity = frame, core, max(1, capacity)
        self.k = max(1, math.ceil(core / max_chunk))
        self.chunk = math.ceil(core / self.k)
        self.dtype = np.dtype(dtype)
        self._file = tempfile.TemporaryFile(prefix=".labels-", suffix=".chunks", dir=folder)
        self._end = 0
        self._index: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self._lru: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded = 0  # chunks decompressed so far

    def chunk_of(self, v: np.ndarray | int) -> np.ndarray | int:
        """Global chunk row (or column) of frame row (or column) indices ``v``."""
        return (v // self.core) * self.k + (v % self.core) // self.chunk

    def start_of(self, g: int) -> int:
        """First frame row (or column) of global chunk row (or column) ``g``."""
        return (g // self.k) * self.core + (g % self.k) * self.chunk

    def put(self, core: Box, labels: np.ndarray) -> None:
        """Store the final labels of one window core: ``core`` a frame box aligned to the
        grid, ``labels`` ``(h, w)`` of it (any unsigned dtype, cast to :attr:`dtype`)."""
        y0, x0, y1, x1 = core
        if labels.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"labels {labels.shape} do not match core {core}")
        gy, gx = self.chunk_of(y0), self.chunk_of(x0)
        c = self.chunk
        for i, cy in enumerate(range(0, y1 - y0, c)):
            for j, cx in enumerate(range(0, x1 - x0, c)):
                blk = labels[cy:cy + c, cx:cx + c]
                if not blk.any():
                    continue
                data = zlib.compress(np.ascontiguousarray(blk, self.dtype).tobytes(), 1)
                self._file.seek(self._end)
                self._file.write(data)
                self._index[(gy + i, gx + j)] = (self._end, len(data)) + blk.shape
                self._end += len(data)
                self._lru.pop((gy + i, gx + j), None)
        self._file.flush()  # reads go around the buffer (os.pread)

    def _read(self, off: int, n: int) -> bytes:
        if hasattr(os, "pread"):  # no shared file position: no lock
            return os.pread(self._file.fileno(), n, off)
        with self._lock:
            self._file.seek(off)
            return self._file.read(n)

    def _get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            a = self._lru.get(key)
            if a is not None:
                self._lru.move_to_end(key)
                return a
            where = self._index.get(key)
        if where is None:
            return None
        off, n, h, w = where
        # read and decompress outside the lock (both let other threads run)
        a = np.frombuffer(zlib.decompress(self._read(off, n)), self.dtype).reshape(h, w)
        with self._lock:
            self.decoded += 1
            self._lru[key] = a
            while len(self._lru) > self.capacity:
                self._lru.popitem(last=False)
        return a

    def region(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Labels ``uint32 (y1 - y0, x1 - x0)`` of a frame box (0 outside the frame)."""
        out = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.uint32)
        H, W = self.frame
        cy0, cx0, cy1, cx1 = max(0, y0), max(0, x0), min(H, y1), min(W, x1)
        if cy0 >= cy1 or cx0 >= cx1:
            return out
        for gr in range(self.chunk_of(cy0), self.chunk_of(cy1 - 1) + 1):
            sy = self.start_of(gr)
            for gc in range(self.chunk_of(cx0), self.chunk_of(cx1 - 1) + 1):
                blk = self._get((gr, gc))
                if blk is None:
                    continue
                sx = self.start_of(gc)
                a0, a1 = max(cy0, sy), min(cy1, sy + blk.shape[0])
                b0, b1 = max(cx0, sx), min(cx1, sx + blk.shape[1])
                out[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = blk[a0 - sy:a1 - sy, b0 - sx:b1 - sx]
        return out

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Labels ``uint32 (h, w)`` at frame indices ``rows (h,)`` x ``cols (w,)`` (each
        non-decreasing, clipped to the frame): nearest-neighbour resampling."""
        rows = np.clip(np.asarray(rows, np.int64), 0, self.frame[0] - 1)
        cols = np.clip(np.asarray(cols, np.int64), 0, self.frame[1] - 1)
        out = np.zeros((rows.size, cols.size), np.uint32)
        if rows.size == 0 or cols.size == 0:
            return out
        rg, cg = self.chunk_of(rows), self.chunk_of(cols)
        ur, ri = np.unique(rg, return_index=True)
        uc, ci = np.unique(cg, return_index=True)
        rb, cb = np.append(ri, rows.size).tolist(), np.append(ci, cols.size).tolist()
        csel = [_runs(cols[cb[n]:cb[n + 1]] - self.start_of(int(g)))
                for n, g in enumerate(uc.tolist())]
        for m, gr in enumerate(ur.tolist()):
            r0, r1 = rb[m], rb[m + 1]
            rsel = None
            for n, gc in enumerate(uc.tolist()):
                blk = self._get((gr, gc))
                if blk is None:
                    continue
                if rsel is None:
                    rsel = _runs(rows[r0:r1] - self.start_of(gr))
                cs = csel[n]
                part = blk[rsel] if isinstance(rsel, slice) else blk[rsel, :]
                out[r0:r1, cb[n]:cb[n + 1]] = part[:, cs]
        return out

    def close(self) -> None:
        """Delete the chunks (the temporary file)."""
        self._lru.clear()
        self._file.close()


def model_mpp(predictor) -> float:
    mpp = getattr(predictor, "mpp", None)
    if mpp is None:
        mpp = getattr(predictor.model_config.preprocess, "mpp", GLAS_MPP)
    return float(mpp)


def cache_key(predictor, slide: Slide, mpp: float, zoom: float, cfg) -> str:
    """The window cache's folder name of one slide, model and settings (``cfg``: a
    :class:`~glandseg.infer.slide.SlideConfig`): 16 hex digits."""
    st = slide.path.stat()
    blob = {
        "version": CACHE_VERSION, "glandseg": __version__,
        "slide": [str(slide.path.resolve()), st.st_size, st.st_mtime_ns],
        "model": model_id(predictor), "mpp": mpp, "zoom": zoom,
        "core": cfg.core, "margin": cfg.margin, "tissue": cfg.tissue,
        "thumb_side": cfg.thumb_side, "tta": bool(getattr(predictor, "tta", False)),
        "tiling": predictor.tiling.as_dict() if hasattr(predictor.tiling, "as_dict")
        else str(predictor.tiling),
        "stain_norm": getattr(predictor, "stain_norm", None),
        "deblur": getattr(predictor, "deblur", None),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def active_windows(windows: list[Window], tissue: np.ndarray | None, tz: float, zoom: float
            ) -> list[Window]:
    if tissue is None:
        return list(windows)
    out = []
    th, tw = tissue.shape
    f = tz / zoom  # thumbnail px per frame px
    for w in windows:
        y0, x0, y1, x1 = w.ext
        ty0, tx0 = max(0, math.floor(y0 * f)), max(0, math.floor(x0 * f))
        ty1, tx1 = min(th, math.ceil(y1 * f)), min(tw, math.ceil(x1 * f))
        if ty1 > ty0 and tx1 > tx0 and tissue[ty0:ty1, tx0:tx1].any():
            out.append(w)
    return out
