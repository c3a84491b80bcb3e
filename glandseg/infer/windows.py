"""Windows of a whole slide and their resumable cache (:func:`glandseg.infer.slide.predict_slide`).

The *frame* is the slide at the model's resolution, cut into square cores of ``core`` px,
each window its core plus ``margin`` px of context (:func:`window_grid`); only windows
touching tissue run (:func:`tissue_mask`, :func:`active_windows`). Each window's label
image (``uint16``/``uint32`` ``(h, w)``, 0 = background) is saved as ``<name>.npz`` in a
cache folder named by :func:`cache_key` (slide file, model, settings), read back through
:class:`WindowStore` (the last few decoded). Boxes are ``(y0, x0, y1, x1)``, end
exclusive, in frame px.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from glandseg import GlandsegError, __version__
from glandseg.data.slide import Slide
from glandseg.models.config import GLAS_MPP
from glandseg.models.fingerprint import config_fingerprint

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive), frame px


CACHE_VERSION = 1


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


def tissue_mask(thumb: np.ndarray, dilate: int = 2) -> np.ndarray:
    """Tissue of an RGB thumbnail ``uint8 (h, w, 3)`` → ``bool (h, w)``.

    Background of a scan is bright and grey (low HSV saturation); stained tissue is
    coloured. Threshold: Otsu on the saturation, kept within [0.04, 0.15] (so an image that
    is all tissue, or all background, is not split in two); then small specks removed,
    holes (lumens) filled and the mask grown by ``dilate`` px.
    """
    from skimage.filters import threshold_otsu

    rgb = thumb.astype(np.float32) / 255.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    t = float(threshold_otsu(sat)) if sat.size > 1 and np.ptp(sat) > 0 else 0.15
    mask = sat > min(max(t, 0.04), 0.15)
    mask = ndi.binary_opening(mask, iterations=1)
    mask = ndi.binary_fill_holes(mask)
    if dilate > 0:
        mask = ndi.binary_dilation(mask, iterations=dilate)
    return mask


def model_id(predictor) -> str:
    """The model's config and weights (:func:`glandseg.models.fingerprint.config_fingerprint`
    of ``predictor.config`` and ``predictor.fingerprint``): identifies the model in the
    window cache and, beside the weights fingerprint, in ``settings.json``."""
    return config_fingerprint(predictor.config, predictor.fingerprint)


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
