"""Grade images: a :class:`~glandseg.grade.classifier.Grader` together with the
segmentation model its features come from.

A grader was fit on the labels (and encoder activations) of one segmentation model, whose
weights it names by fingerprint. :meth:`ImageGrader.load` reuses the caller's predictor
when it has those exact weights (the labels it already computed are then reused), and
otherwise loads the grader's own model; if that model's weights are not the ones the grader
was fit with (a replaced bundled model), grading is refused with a one-line error: refit the
grader (``python -m glandseg.grade.fit``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glandseg import GlandsegError
from glandseg.grade.classifier import Grader, load_grader
from glandseg.grade.features import encoder_features, morphometric_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grade:
    """The grade of one image: ``"benign"`` or ``"malignant"`` and ``p(malignant)``."""

    grade: str
    probability: float


def image_features(predictor, image: np.ndarray, labels: np.ndarray | None,
                   encoder: bool = True, morphometrics: bool = True) -> dict[str, float]:
    """Morphometric (if ``morphometrics``) and encoder (if ``encoder``) features of one
    image ``uint8 (H, W, 3)``; ``labels`` ``(H, W)`` (0 = background) from ``predictor``,
    segmented here when ``None`` and needed."""
    feats: dict[str, float] = {}
    if morphometrics:
        if labels is None:
            labels = predictor.predict(image)
        feats.update(morphometric_features(image, labels))
    if encoder:
        feats.update(encoder_features(predictor, image))
    return feats


class ImageGrader:
    """Grades images with ``grader`` and the segmentation ``predictor`` it was fit on."""

    def __init__(self, grader: Grader, predictor) -> None:
        self.grader = grader
        self.predictor = predictor
        self._fingerprint = predictor.fingerprint
        self._shared: list[tuple[object, bool]] = [(predictor.backend, True)]
        if self._fingerprint != grader.segmentation.fingerprint:
            raise GlandsegError(
                f"{grader.source or 'grader'}: fit on segmentation weights "
                f"{grader.segmentation.fingerprint[:12]} ({grader.segmentation.model}), but "
                f"the model given has {self._fingerprint[:12]}; refit the grader for it "
                "(python -m glandseg.grade.fit --model MODEL)")

    @classmethod
    def load(cls, grader: str | Path | Grader | None = None, predictor=None,
             device: str = "auto", backend: str = "auto",
             threads: int | None = None, precision: str = "fp32") -> ImageGrader:
        """The grader (a path, a :class:`Grader` or ``None`` = bundled) with ``predictor``
        if it has the grader's segmentation weights, else with the grader's own model (on
        ``backend``, ``threads``, ``precision``: :meth:`Predictor.from_name`; the
        predictor's backend when one is given)."""
        g = grader if isinstance(grader, Grader) else load_grader(grader)
        if predictor is not None and predictor.fingerprint == g.segmentation.fingerprint:
            return cls(g, predictor)
        from glandseg.infer.predictor import Predictor

        log.info("grading with %s (the segmentation model the grader was fit on)",
                 g.segmentation.model)
        dev = getattr(predictor, "device", device) if predictor is not None else device
        kind = predictor.backend.name if predictor is not None else backend
        if predictor is not None:
            precision = getattr(predictor.backend, "precision", "fp32")
        return cls(g, Predictor.from_name(g.segmentation.model, device=str(dev), backend=kind,
                                          threads=threads, precision=precision))

    def shares(self, predictor) -> bool:
        """Whether labels of ``predictor`` are the ones this grader needs (same weights;
        remembered per network object)."""
        if predictor is None:
            return False
        backend = predictor.backend
        for m, same in self._shared:
            if m is backend:
                return same
        same = predictor.fingerprint == self._fingerprint
        self._shared.append((backend, same))
        return same

    def features(self, image: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """The features this grader uses of one image (see :func:`image_features`; an
        encoder-only grader needs no segmentation); ``labels`` must come from this grader's
        segmentation model (``None``: segmented here if needed)."""
        g = self.grader
        return image_features(self.predictor, image, labels, encoder=g.uses_encoder,
                              morphometrics=g.uses_morphometrics)

    def grade(self, image: np.ndarray, labels: np.ndarray | None = None) -> Grade:
        """Grade one image ``uint8 (H, W, 3)`` (``labels`` as in :meth:`features`)."""
        x = self.grader.vector(self.features(image, labels))
        p = float(self.grader.probability(x)[0])
        return Grade(self.grader.label(p), p)

    def grade_segmented(self, image: np.ndarray, labels: np.ndarray, predictor) -> Grade:
        """Grade one image ``uint8 (H, W, 3)`` that ``predictor`` segmented into ``labels``
        ``(H, W)`` (0 = background): the labels are reused where this grader was fit on
        ``predictor``'s weights (:meth:`shares`), else the grader segments it itself."""
        return self.grade(image, labels if self.shares(predictor) else None)
