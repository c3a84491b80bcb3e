"""Stain normalisation of H&E images against a reference (Macenko 2009, Reinhard 2001).

Both methods come from `torchstain <https://github.com/EIDOSLAB/torchstain>`_ (its NumPy
backend, no torch needed); this module adds the reference that ships with glandseg, guards
for images with too little tissue, and statistics to check the result.

- ``macenko``: the image's two stain vectors (H, E) in optical density are estimated
  (eigen-plane of the tissue pixels, 1st/99th angle percentiles), its stain concentrations
  unmixed, scaled so that their 99th percentiles match the reference's, and remixed with
  the reference stain vectors.
- ``reinhard``: per-channel mean and standard deviation in CIE L*a*b* matched to the
  reference's.

The reference (``glandseg/data/stain_reference.json``) holds statistics only, no image:
fitted by ``benchmarks/stain_reference.py`` on the GlaS training images of the training
patients (the images the bundled models were trained on). Images are ``uint8 (H, W, 3)``
RGB throughout; the output has the input's shape and dtype.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from glandseg import GlandsegError

log = logging.getLogger(__name__)

METHODS = ("macenko", "reinhard")
#: The reference bundled with glandseg (GlaS training patients).
REFERENCE_FILE = "stain_reference.json"
#: Transmitted light intensity and optical-density threshold of a tissue pixel (Macenko;
#: torchstain's defaults): a pixel is tissue when its OD is >= BETA in all channels.
IO, BETA, ALPHA = 240, 0.15, 1
#: Fewer tissue pixels than this (or than this fraction) and an image is left unchanged:
#: stain vectors cannot be estimated from a blank or nearly blank image.
MIN_TISSUE_PIXELS, MIN_TISSUE_FRACTION = 500, 0.01


def _torchstain():
    try:
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise GlandsegError("stain normalisation needs torchstain: pip install torchstain"
                            ) from exc
    return NumpyMacenkoNormalizer, NumpyReinhardNormalizer


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} "
                         f"{image.shape}")
    return image


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """``bool (H, W)``: pixels whose optical density is >= :data:`BETA` in every channel
    (Macenko's tissue pixels; white background and very pale pixels are ``False``)."""
    image = _check_image(image)
    limit = IO * np.exp(-BETA) - 1  # OD >= BETA  <=>  I + 1 <= IO exp(-BETA)
    return np.all(image <= limit, axis=2)


def _enough_tissue(image: np.ndarray) -> bool:
    """Enough tissue pixels (:data:`MIN_TISSUE_PIXELS`, :data:`MIN_TISSUE_FRACTION`), and
    not all of one colour (their values vary by at least 1 grey level in every channel)."""
    mask = tissue_mask(image)
    n = int(mask.sum())
    if n < MIN_TISSUE_PIXELS or n < MIN_TISSUE_FRACTION * image.shape[0] * image.shape[1]:
        return False
    return float(image[mask].std(axis=0).min()) >= 1.0


def macenko_stats(image: np.ndarray) -> dict[str, list]:
    """Macenko statistics of an image (or a ``(N, 1, 3)`` stack of pixels):
    ``{"stain_matrix": 3 x 2 (RGB optical density; columns H, E), "max_concentrations":
    [H, E] (99th percentiles)}``. Raises ``ValueError`` when there is too little tissue."""
    image = _check_image(image)
    if not _enough_tissue(image):
        raise ValueError("too little tissue to estimate stain vectors")
    macenko, _ = _torchstain()
    n = macenko()
    n.fit(image, Io=IO, alpha=ALPHA, beta=BETA)
    return {"stain_matrix": np.asarray(n.HERef, float).tolist(),
            "max_concentrations": np.asarray(n.maxCRef, float).tolist()}


def reinhard_stats(image: np.ndarray) -> dict[str, list]:
    """Reinhard statistics: ``{"mean": [L, a, b], "std": [L, a, b]}`` over all pixels
    (torchstain's L*a*b*: L in [0, 100], a and b centred on 0)."""
    image = _check_image(image)
    _, reinhard = _torchstain()
    n = reinhard()
    n.fit(image)
    return {"mean": np.asarray(n.target_means, float).tolist(),
            "std": np.asarray(n.target_stds, float).tolist()}


def _pixels(images: Iterable[np.ndarray], per_image: int, seed: int) -> np.ndarray:
    """A ``(N, 1, 3)`` stack of up to ``per_image`` random pixels of each image."""
    rng = np.random.default_rng(seed)
    out = []
    for im in images:
        flat = _check_image(im).reshape(-1, 3)
        k = min(per_image, len(flat))
        out.append(flat[rng.choice(len(flat), k, replace=False)])
    if not out:
        raise ValueError("no images to fit a stain reference on")
    return np.concatenate(out)[:, None, :]


def fit_reference(images: Iterable[np.ndarray], per_image: int = 20000, seed: int = 0,
                  source: str = "") -> dict:
    """The reference statistics of a set of images (both methods), from ``per_image``
    random pixels of each: what ``stain_reference.json`` holds."""
    px = _pixels(images, per_image, seed)
    return {"format": "glandseg-stain-reference", "version": 1, "source": source,
            "io": IO, "beta": BETA, "pixels": int(len(px)),
            "macenko": macenko_stats(px), "reinhard": reinhard_stats(px)}


def load_reference(path: str | Path | None = None) -> dict:
    """A stain reference (default: the bundled GlaS one), checked."""
    if path is None:
        path = Path(str(resources.files("glandseg.data") / REFERENCE_FILE))
    path = Path(path)
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
        he = np.asarray(ref["macenko"]["stain_matrix"], float)
        mc = np.asarray(ref["macenko"]["max_concentrations"], float)
        mean = np.asarray(ref["reinhard"]["mean"], float)
        std = np.asarray(ref["reinhard"]["std"], float)
    except FileNotFoundError as exc:
        raise GlandsegError(f"{path}: stain reference not found; reinstall glandseg") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GlandsegError(f"{path}: not a glandseg stain reference ({exc}); reinstall "
                            "glandseg or refit it with benchmarks/stain_reference.py") from exc
    if (he.shape != (3, 2) or mc.shape != (2,) or mean.shape != (3,) or std.shape != (3,)
            or not np.all(np.isfinite(np.concatenate([he.ravel(), mc, mean, std])))
            or np.any(mc <= 0) or np.any(std <= 0)):
        raise GlandsegError(f"{path}: stain reference has wrong shapes or values; refit it "
                            "with benchmarks/stain_reference.py")
    return ref


class StainNormalizer:
    """``StainNormalizer(method, reference=None)(image) -> image``: normalise a ``uint8
    (H, W, 3)`` RGB image to the reference's stain statistics (``method`` ``macenko`` or
    ``reinhard``; ``reference``: a dict of :func:`load_reference`, default the bundled GlaS
    one). An image with too little tissue (< :data:`MIN_TISSUE_PIXELS` or
    :data:`MIN_TISSUE_FRACTION`) or whose stain vectors cannot be estimated is returned
    unchanged (logged); so is one whose tissue is all of one colour."""

    def __init__(self, method: str, reference: Mapping | None = None) -> None:
        if method not in METHODS:
            raise GlandsegError(f"stain normalisation {method!r}: choose one of "
                                f"{', '.join(METHODS)}")
        self.method = method
        self.reference = dict(reference) if reference is not None else load_reference()
        macenko, reinhard = _torchstain()
        if method == "macenko":
            self._n = macenko()
            self._n.HERef = np.asarray(self.reference["macenko"]["stain_matrix"], float)
            self._n.maxCRef = np.asarray(self.reference["macenko"]["max_concentrations"],
                                         float)
        else:
            self._n = reinhard()
            self._n.target_means = np.asarray(self.reference["reinhard"]["mean"], float)
            self._n.target_stds = np.asarray(self.reference["reinhard"]["std"], float)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = _check_image(image)
        if not _enough_tissue(image):
            log.info("stain normalisation skipped: too little (varied) tissue in a %dx%d image",
                     image.shape[1], image.shape[0])
            return image
        try:
            with np.errstate(all="ignore"):
                if self.method == "macenko":
                    out = self._n.normalize(image, Io=IO, alpha=ALPHA, beta=BETA,
                                            stains=False)[0]
                else:
                    out = self._n.normalize(image)
        except (np.linalg.LinAlgError, ValueError) as exc:
            log.warning("stain normalisation skipped for a %dx%d image (%s)",
                        image.shape[1], image.shape[0], exc)
            return image
        return np.ascontiguousarray(out, dtype=np.uint8)
