"""Focus: measure how blurred an H&E image is, and sharpen one that is blurrier than the
images a model was trained on (``--deblur auto``).

Scanners and microscopes differ in focus, and an out-of-focus region erases the thin gaps
between neighbouring glands, which then merge. :func:`estimate_blur` measures the blur of an
image as the width ``sigma`` (px) of a Gaussian that would explain its sharpest edges, by the
re-blur ratio (Zhuo & Sim, "Defocus map estimation from a single image", 2011): at a step
edge blurred by ``sigma`` the gradient peak falls by ``sqrt(sigma**2 + s0**2) / sigma`` when
the image is blurred again by a known ``s0``, so ``sigma = s0 / sqrt(R**2 - 1)`` for the
measured ratio ``R`` (median over the 2 % strongest gradients). On GlaS at 0.62 µm/px it reads
about 0.96 px for the training images (median; 5-95 %: 0.87-1.05, all: 0.85-1.09) and
``sqrt(0.96**2 + s**2)`` after a further Gaussian blur of ``s`` px.

:class:`Deblur` sharpens an image whose extra blur ``sqrt(sigma**2 - reference**2)`` exceeds
``threshold`` px by unsharp masking (``x + amount * (x - gaussian(x, scale * extra))``);
sharper images pass unchanged. The defaults were chosen on validation copies blurred by
σ 1 and 2 px (benchmarks/README_robustness.md). It works at the model's resolution (the
:class:`~glandseg.infer.predictor.Predictor` applies it after resampling), where the
reference holds. The reference is GlaS's (20x, 0.62 µm/px) for every model: a model trained
on much sharper or softer scans would need its own (``Deblur(reference=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Median estimated blur (px) of the 67 GlaS training images of the patient split
#: (``patient_split(..., 0.2, seed 0)``) at 0.62 µm/px; recomputed in the tests.
GLAS_BLUR_SIGMA = 0.96

#: Re-blur width (px) of the estimator, and the share of strongest gradients it reads.
REBLUR_SIGMA = 1.0
EDGE_QUANTILE = 0.98


def _gray(image: np.ndarray) -> np.ndarray:
    """``uint8 (H, W, 3)`` or float in [0, 1] → float64 luminance ``(H, W)`` in [0, 1]."""
    from skimage.color import rgb2gray

    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    x = image.astype(np.float64)
    if image.dtype == np.uint8:
        x /= 255.0
    return rgb2gray(x)


#: Images over this many pixels (a slide window) are measured on :data:`SAMPLE_GRID` ²
#: evenly spaced blocks of :data:`SAMPLE_BLOCK` ² px (2.4 MP) instead of whole; every GlaS
#: image is measured whole.
SAMPLE_ABOVE = 4_000_000
SAMPLE_BLOCK = 512
SAMPLE_GRID = 3
_MARGIN = 8  # px around each block, filtered then dropped (no border effects inside)


def sobel_magnitude(g: np.ndarray) -> np.ndarray:
    """``skimage.filters.sobel(g)`` of a float64 ``(H, W)`` image (``sqrt((gx² + gy²) / 2)``,
    reflected borders) by separable 1-D passes, 2x faster; equal to 1e-12 (the order of the
    float sums differs)."""
    from scipy import ndimage as ndi

    smooth, edge = np.array([0.25, 0.5, 0.25]), np.array([1.0, 0.0, -1.0])
    gy = ndi.correlate1d(ndi.correlate1d(g, smooth, axis=1, mode="reflect"), edge, axis=0,
                         mode="reflect")
    gx = ndi.correlate1d(ndi.correlate1d(g, smooth, axis=0, mode="reflect"), edge, axis=1,
                         mode="reflect")
    gy *= gy
    gx *= gx
    gy += gx
    gy /= 2.0
    return np.sqrt(gy, out=gy)


def _gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel magnitudes of the luminance of ``image`` before and after the re-blur."""
    from skimage.filters import gaussian

    g = _gray(image)
    return sobel_magnitude(g), sobel_magnitude(gaussian(g, REBLUR_SIGMA))


def _sampled_gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_gradients` of a grid of blocks of a large image, flattened and joined."""
    h, w = image.shape[:2]
    b, m = SAMPLE_BLOCK, _MARGIN
    ys = np.linspace(0, max(h - b, 0), SAMPLE_GRID).round().astype(int)
    xs = np.linspace(0, max(w - b, 0), SAMPLE_GRID).round().astype(int)
    g0s, g1s = [], []
    for y in sorted(set(ys.tolist())):
        for x in sorted(set(xs.tolist())):
            y0, x0 = max(y - m, 0), max(x - m, 0)
            block = image[y0:min(y + b + m, h), x0:min(x + b + m, w)]
            g0, g1 = _gradients(block)
            inner = (slice(y - y0, y - y0 + b), slice(x - x0, x - x0 + b))
            g0s.append(g0[inner].ravel())
            g1s.append(g1[inner].ravel())
    return np.concatenate(g0s), np.concatenate(g1s)


def estimate_blur(image: np.ndarray) -> float:
    """Gaussian-equivalent blur ``sigma`` (px) of ``image``: ``uint8 (H, W, 3)`` or float
    ``(H, W, 3)`` in [0, 1]. A flat image (no edges) gives 0. An image over
    :data:`SAMPLE_ABOVE` px is measured on a grid of blocks (3 x 3 of 512²)."""
    if image.shape[0] * image.shape[1] > SAMPLE_ABOVE:
        g0, g1 = _sampled_gradients(image)
    else:
        g0, g1 = _gradients(image)
    if not np.any(g0 > 1e-6):
        return 0.0
    strong = g0 >= np.quantile(g0, EDGE_QUANTILE)
    strong &= g0 > 1e-6
    r = float(np.median(g0[strong] / np.maximum(g1[strong], 1e-9)))
    return float(REBLUR_SIGMA / np.sqrt(max(r * r - 1.0, 1e-6)))


def unsharp(image: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """``image + amount * (image - gaussian(image, sigma))``, clipped; float ``(H, W, 3)`` in
    [0, 1] in and out (``uint8`` in gives ``uint8`` out)."""
    from skimage.filters import gaussian

    is_u8 = image.dtype == np.uint8
    if not (is_u8 or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"expected uint8 or float in [0, 1], got {image.dtype}")
    x = image.astype(np.float32) / 255.0 if is_u8 else image.astype(np.float32)
    b = gaussian(x, sigma=sigma, channel_axis=-1, preserve_range=True)
    out = np.clip(x + amount * (x - b), 0.0, 1.0)
    return (out * 255.0 + 0.5).astype(np.uint8) if is_u8 else out.astype(np.float32)


@dataclass(frozen=True)
class Deblur:
    """Sharpen images blurrier than ``reference`` (px, at the model's resolution).

    ``threshold``: extra blur (px) below which an image passes unchanged; ``scale``: the
    unsharp-mask width as a share of the extra blur; ``amount``: its strength."""

    reference: float = GLAS_BLUR_SIGMA
    threshold: float = 0.7
    scale: float = 0.75
    amount: float = 4.0

    def extra(self, image: np.ndarray) -> float:
        """Blur (px) of ``image`` beyond the reference, in quadrature (0 if sharper)."""
        s = estimate_blur(image)
        return float(np.sqrt(max(s * s - self.reference ** 2, 0.0)))

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """``(image, extra blur px)``: sharpened if the extra blur exceeds the threshold,
        else ``image`` itself. ``uint8`` or float ``(H, W, 3)`` in [0, 1]."""
        e = self.extra(image)
        if e < self.threshold:
            return image, e
        return unsharp(image, self.scale * e, self.amount), e
