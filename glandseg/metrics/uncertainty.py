"""How unsure a dense model is about an image: which predictions to correct first.

:func:`uncertainty` of the probabilities a U-Net gives (``Predictor.predict_with_proba``):
the share of the pixels *near glands* whose class decision is uncertain:

- near glands: pixels whose gland probability (interior + boundary; the one channel of a
  binary model) is at least :data:`NEAR_GLAND` (0.1): the glands, their borders and
  anything the model half-takes for a gland; plain background and empty glass do not count;
- uncertain: the most probable class (background, interior or boundary) has a probability
  below :data:`CONFIDENT` (0.7).

0 = every decision near glands is confident; 1 = none is. ``glandseg predict`` writes it per
image to ``images.csv`` and sorts ``index.html`` by it, most uncertain first: the images a
pathologist should correct first (README, "Correct and retrain").
"""

from __future__ import annotations

import numpy as np

#: A pixel is near glands when its gland probability is at least this.
NEAR_GLAND = 0.1
#: A decision is confident when its class has at least this probability.
CONFIDENT = 0.7


def uncertainty(probs: np.ndarray) -> float:
    """Share (0-1) of the near-gland pixels with an uncertain decision (module doc).

    ``probs``: ``float (C, H, W)`` class probabilities, ``C`` = 3 (background, interior,
    boundary; each pixel's sum 1) or 1 (gland probability of a binary model). An image
    with no pixel near a gland gives 0."""
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] not in (1, 3):
        raise ValueError(f"probs must be (1 or 3, H, W), got shape {p.shape}")
    if p.shape[0] == 1:
        gland = p[0]
        top = np.maximum(gland, 1 - gland)
    else:
        gland = p[1] + p[2]
        top = p.max(axis=0)
    near = gland >= NEAR_GLAND
    n = int(np.count_nonzero(near))
    if n == 0:
        return 0.0
    return float(np.count_nonzero(near & (top < CONFIDENT)) / n)
