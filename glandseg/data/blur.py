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


def estimate_blur(image: np.ndarray) -> float:
    """Gaussian-equivalent blur ``sigma`` (px) of ``image``: ``uint8 (H, W, 3)`` or float
    ``(H, W, 3)`` in [0, 1]. A flat image (no edges) gives 0."""
    from skimage.filters import gaussian, sobel

    g = _gray(image)
    g0 = sobel(g)
    if not np.any(g0 > 1e-6):
        return 0.0
    g1 = sobel(gaussian(g, REBLUR_SIGMA))
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
