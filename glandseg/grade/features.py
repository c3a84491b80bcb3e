"""Image-level features for benign/malignant grading.

Two sources of evidence, both computed from one RGB image ``uint8 (H, W, 3)``:

- :func:`morphometric_features`: gland morphometrics from an instance label image
  ``(H, W)`` integers (0 = background, 1..N one gland each), the quantities pathologists
  grade by: gland count and density, area, shape irregularity (solidity, form factor),
  eccentricity, and the lumen / epithelium proportions inside the glands (lumen = unstained
  pixels, epithelium = haematoxylin-dense pixels, both thresholds relative to the image, so
  a stain or brightness shift moves them less).
- :func:`encoder_features`: the segmentation network's encoder feature maps (each stage)
  global-average-pooled, at the model's own pre-processing.

Both return ``{name: float}`` in a fixed order (:data:`MORPHOMETRIC_NAMES`,
:func:`encoder_feature_names`); a value may be NaN where it is undefined (no glands): the
classifier then uses the training mean.
"""

from __future__ import annotations

import math

import numpy as np
from skimage import measure as skmeasure
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

from glandseg.infer.predictor import pad_to_stride
from glandseg.models.fingerprint import model_fingerprint

__all__ = ["MORPHOMETRIC_NAMES", "encoder_feature_names", "encoder_features", "has_encoder",
           "model_fingerprint", "morphometric_features", "stain_masks"]

#: Names of :func:`morphometric_features`, in order.
MORPHOMETRIC_NAMES: tuple[str, ...] = (
    "n_glands",
    "glands_per_mpx",
    "gland_fraction",
    "log_area_mean",
    "log_area_std",
    "largest_gland_fraction",
    "solidity_mean",
    "solidity_min",
    "form_factor_mean",
    "form_factor_max",
    "eccentricity_mean",
    "minor_major_mean",
    "lumen_fraction",
    "lumen_fraction_std",
    "epithelium_fraction",
    "stroma_nuclei_fraction",
    "image_nuclei_fraction",
    "image_white_fraction",
)

#: Bump when a feature's definition changes (cached features of older versions are unused).
FEATURES_VERSION = 2

#: Glands smaller than this (pixels) are ignored by the morphometrics (stray fragments).
MIN_GLAND_PX = 50


def _check(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if labels.ndim != 2 or labels.shape != image.shape[:2]:
        raise ValueError(f"labels must be (H, W) = {image.shape[:2]}, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    return image, labels


def stain_masks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(white, nuclei)`` boolean ``(H, W)`` masks of an H&E image ``uint8 (H, W, 3)``.

    ``white``: unstained pixels (lumen, fat, empty slide): grey level (channel mean) at
    least 0.75 of the image's 99th percentile and saturation ``(max - min) / max`` under
    0.2. ``nuclei``: haematoxylin (:func:`skimage.color.rgb2hed`) above Otsu's threshold
    of the non-white pixels.
    """
    rgb = image.astype(np.float32)
    grey = rgb.mean(axis=2)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    sat = (hi - lo) / np.maximum(hi, 1.0)
    white = (grey >= 0.75 * max(float(np.percentile(grey, 99)), 1.0)) & (sat < 0.2)
    hema = rgb2hed(image)[..., 0]
    tissue = hema[~white]
    if tissue.size < 2 or float(tissue.max()) <= float(tissue.min()):
        return white, np.zeros_like(white)
    nuclei = (hema > threshold_otsu(tissue)) & ~white
    return white, nuclei


def morphometric_features(image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image-level gland morphometrics (:data:`MORPHOMETRIC_NAMES`).

    ``image``: ``uint8 (H, W, 3)``; ``labels``: ``(H, W)`` integers, 0 = background, each
    other value one gland (glands under :data:`MIN_GLAND_PX` px ignored). Areas are in
    pixels of the image as given (GlaS: 0.62 µm/px). Per-gland values are averaged with
    area weights (``*_mean``); ``form_factor`` = perimeter² / (4π area) (1 for a disc,
    larger = more irregular); ``lumen_fraction`` / ``epithelium_fraction``: white /
    haematoxylin-dense share of the gland area (:func:`stain_masks`). Values that need a
    gland are NaN when there is none.
    """
    image, labels = _check(image, labels)
    h, w = labels.shape
    white, nuclei = stain_masks(image)
    props = [p for p in skmeasure.regionprops(labels.astype(np.int32, copy=False))
             if p.area >= MIN_GLAND_PX]
    n = len(props)
    fg = np.zeros((h, w), bool)
    nan = math.nan
    f: dict[str, float] = dict.fromkeys(MORPHOMETRIC_NAMES, nan)
    f["n_glands"] = float(n)
    f["glands_per_mpx"] = n / (h * w / 1e6)
    f["image_nuclei_fraction"] = float(nuclei.mean())
    f["image_white_fraction"] = float(white.mean())
    if n == 0:
        f["gland_fraction"] = 0.0
        f["stroma_nuclei_fraction"] = float(nuclei.mean())
        return f
    area = np.array([p.area for p in props], dtype=np.float64)
    solidity, form, ecc, ratio, lumen, epi = [], [], [], [], [], []
    for p in props:
        sl = p.slice
        m = p.image
        fg[sl] |= m
        try:
            solidity.append(float(p.solidity))
        except Exception:  # degenerate convex hull (qhull) on odd shapes
            solidity.append(1.0)
        form.append(float(p.perimeter) ** 2 / (4 * math.pi * p.area))
        ecc.append(float(p.eccentricity))
        major = float(p.axis_major_length)
        ratio.append(float(p.axis_minor_length) / major if major > 0 else 1.0)
        lumen.append(float(white[sl][m].mean()))
        epi.append(float(nuclei[sl][m].mean()))
    wts = area / area.sum()

    def wmean(v: list[float]) -> float:
        return float(np.dot(wts, np.asarray(v)))

    log_area = np.log(area)
    f["gland_fraction"] = float(fg.mean())
    f["log_area_mean"] = float(log_area.mean())
    f["log_area_std"] = float(log_area.std())
    f["largest_gland_fraction"] = float(area.max() / (h * w))
    f["solidity_mean"] = wmean(solidity)
    f["solidity_min"] = float(min(solidity))
    f["form_factor_mean"] = wmean(form)
    f["form_factor_max"] = float(max(form))
    f["eccentricity_mean"] = wmean(ecc)
    f["minor_major_mean"] = wmean(ratio)
    f["lumen_fraction"] = wmean(lumen)
    lm = f["lumen_fraction"]
    f["lumen_fraction_std"] = float(math.sqrt(max(wmean([(x - lm) ** 2 for x in lumen]), 0.0)))
    f["epithelium_fraction"] = wmean(epi)
    stroma = ~fg & ~white
    f["stroma_nuclei_fraction"] = float(nuclei[stroma].mean()) if stroma.any() else 0.0
    return f


# ------------------------------------------------------------------------------- encoder


def encoder_feature_names(channels: list[int] | tuple[int, ...]) -> list[str]:
    """``enc{stage}_{channel}`` for encoder stages with ``channels`` channels each."""
    return [f"enc{s}_{c}" for s, n in enumerate(channels) for c in range(n)]


def has_encoder(model) -> bool:
    """Whether ``model`` (a torch network, a backend of :mod:`glandseg.infer.backend` or a
    :class:`~glandseg.infer.predictor.Predictor`) exposes a feature-pyramid encoder."""
    backend = getattr(model, "backend", None)
    if backend is not None:
        return bool(backend.has_encoder)
    if hasattr(model, "encoder_means"):
        return bool(model.has_encoder)
    enc = getattr(model, "encoder", None)
    return enc is not None and hasattr(enc, "feature_info")


def encoder_features(predictor, image: np.ndarray, max_side: int = 2048) -> dict[str, float]:
    """Global-average-pooled encoder features of ``image`` ``uint8 (H, W, 3)``.

    ``predictor``: a :class:`glandseg.infer.predictor.Predictor` whose model has an
    ``encoder`` (a timm ``features_only`` network, :class:`~glandseg.models.unet.EncoderUNet`).
    The image goes through the model's pre-processing (scale, mean, std) and is padded
    (reflect) to the encoder stride; an image larger than ``max_side`` px at the model's
    scale is pooled over ``max_side`` tiles (tile means averaged by pixel count).
    Returns ``{enc{stage}_{channel}: mean activation}`` (:func:`encoder_feature_names`).
    """
    backend = predictor.backend
    if not backend.has_encoder:
        raise ValueError("this model has no feature-pyramid encoder to pool")
    x = predictor.normalise(image)
    hh, ww = x.shape[-2:]
    sums: list[np.ndarray] | None = None
    total = 0.0
    for y0 in range(0, hh, max_side):
        for x0 in range(0, ww, max_side):
            tile = x[None, :, y0:y0 + max_side, x0:x0 + max_side]
            th, tw = tile.shape[-2:]
            means = backend.encoder_means(pad_to_stride(tile, 32, "edge"))
            part = [m[0].astype(np.float64) * (th * tw) for m in means]
            sums = part if sums is None else [s_ + p for s_, p in zip(sums, part, strict=True)]
            total += th * tw
    channels = [len(s_) for s_ in sums]
    vec = np.concatenate([s_ / total for s_ in sums])
    return dict(zip(encoder_feature_names(channels), (float(v) for v in vec), strict=True))
