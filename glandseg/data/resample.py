"""Resampling of float images in NumPy, equal (to float32 rounding) to ``torch.nn.functional.interpolate``.

Inference runs without torch (ONNX Runtime on the CPU), but must see exactly the pixels that
training and the torch backend see, so the three kernels the pipeline uses are rebuilt here
as separable sparse matrices ``(out, in)`` applied along each axis:

- ``area``: :func:`torch.nn.functional.adaptive_avg_pool2d` (what ``mode="area"`` is): output
  pixel ``i`` averages input pixels ``floor(i·in/out) .. ceil((i+1)·in/out) - 1``;
- ``bicubic`` (``align_corners=False``): Keys' cubic convolution with ``A = -0.75``, source
  ``(i + 0.5)·in/out - 0.5``, indices clamped at the border;
- ``bilinear`` (``align_corners=False``), with or without ``antialias`` (PIL's triangle filter
  widened by the shrink factor, as torch's ``_upsample_bilinear2d_aa``).

Arrays are ``float32 (C, H, W)``; a size is ``(h, w)`` in pixels. Tests compare each kernel
with torch (``tests/unit/test_resample.py``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import sparse

__all__ = ["interpolate", "resample", "resize_image", "MODES"]

MODES = ("area", "bicubic", "bilinear", "bilinear-aa")


def _area(n_in: int, n_out: int) -> sparse.csr_matrix:
    rows, cols, vals = [], [], []
    for i in range(n_out):
        s = (i * n_in) // n_out
        e = -((-(i + 1) * n_in) // n_out)  # ceil
        k = e - s
        rows += [i] * k
        cols += range(s, e)
        vals += [1.0 / k] * k
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in), dtype=np.float64)


def _cubic(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def _bicubic(n_in: int, n_out: int) -> sparse.csr_matrix:
    scale = n_in / n_out
    rows, cols, vals = [], [], []
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        x0 = math.floor(src)
        t = src - x0
        for k, w in enumerate(_cubic(t)):
            rows.append(i)
            cols.append(min(max(x0 - 1 + k, 0), n_in - 1))
            vals.append(w)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in), dtype=np.float64)


def _bilinear(n_in: int, n_out: int) -> sparse.csr_matrix:
    scale = n_in / n_out
    rows, cols, vals = [], [], []
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        x0 = min(int(src), n_in - 1)
        x1 = min(x0 + 1, n_in - 1)
        lam = src - x0
        rows += [i, i]
        cols += [x0, x1]
        vals += [1.0 - lam, lam]
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in), dtype=np.float64)


def _bilinear_aa(n_in: int, n_out: int) -> sparse.csr_matrix:
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    rows, cols, vals = [], [], []
    for i in range(n_out):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(int(center + support + 0.5), n_in) - xmin
        w = [max(0.0, 1.0 - abs((j + xmin - center + 0.5) * inv)) for j in range(xsize)]
        total = sum(w)
        if total != 0.0:
            w = [v / total for v in w]
        rows += [i] * xsize
        cols += range(xmin, xmin + xsize)
        vals += w
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in), dtype=np.float64)


_BUILDERS = {"area": _area, "bicubic": _bicubic, "bilinear": _bilinear,
             "bilinear-aa": _bilinear_aa}


@lru_cache(maxsize=64)
def _matrix(mode: str, n_in: int, n_out: int) -> sparse.csr_matrix:
    return _BUILDERS[mode](n_in, n_out).astype(np.float32)


def interpolate(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``float32 (C, H, W)`` → ``float32 (C, h, w)`` with ``size = (h, w)``; ``mode`` one of
    :data:`MODES` (``bilinear-aa``: bilinear with antialiasing). Equals
    ``F.interpolate(x[None], size, mode=..., align_corners=False)[0]`` to float32 rounding."""
    if mode not in _BUILDERS:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    x = np.asarray(x, dtype=np.float32)
    c, h, w = x.shape
    oh, ow = int(size[0]), int(size[1])
    if (oh, ow) == (h, w):
        return x
    out = x
    if oh != h:  # rows: (oh, h) @ (h, c*w)
        m = _matrix(mode, h, oh)
        out = (m @ out.transpose(1, 0, 2).reshape(h, c * w)).reshape(oh, c, w).transpose(1, 0, 2)
    if ow != w:  # columns: (c*oh, w) @ (w, ow)
        m = _matrix(mode, w, ow)
        cur = np.ascontiguousarray(out).reshape(c * oh, w)
        out = np.asarray((m @ cur.T).T).reshape(c, oh, ow)
    return np.ascontiguousarray(out, dtype=np.float32)


def resample(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bring a float image ``(C, H, W)`` to another resolution ``shape = (h, w)``: area
    averaging when shrinking (what a scanner's sensor does: a 0.31 µm/px scan averaged 2 x 2
    is a 0.62 µm/px one), bicubic when enlarging (values may overshoot: clamp them)."""
    shape = (int(shape[0]), int(shape[1]))
    if tuple(x.shape[-2:]) == shape:
        return x
    if shape[0] * shape[1] <= x.shape[-2] * x.shape[-1]:
        return interpolate(x, shape, "area")
    return interpolate(x, shape, "bicubic")


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``uint8 (H, W, 3)`` → ``uint8 (*shape, 3)`` (:func:`resample`, rounded and clipped)."""
    if tuple(image.shape[:2]) == tuple(shape):
        return image
    x = np.ascontiguousarray(image).transpose(2, 0, 1).astype(np.float32)
    x = resample(x, shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(1, 2, 0)
