"""glandseg: gland instance segmentation in H&E histology images.

The public API (imported on first use, so ``import glandseg`` stays cheap)::

    import glandseg

    pred = glandseg.Predictor.from_name("glas-unet")      # bundled model, run folder, file
    labels = pred.predict(glandseg.read_image("x.png"))   # int32 (H, W), 0 = background
    glandseg.score(labels, glandseg.read_label("x_anno.bmp"))  # official GlaS metrics

- :class:`Predictor`: image ``uint8 (H, W, 3)`` → labels or probabilities (tiling, TTA);
- :func:`load_model`: ``(network, config dict)`` of a name, run folder or weights file;
- :class:`ModelConfig`: the typed, checked model config;
- :func:`read_image` (``uint8 (H, W, 3)``), :func:`read_label` (``int32 (H, W)``),
  :func:`write_label`;
- :func:`score`: the official GlaS metrics of label images;
- :class:`GlandsegError`: every error caused by the user's input.

Stages, one sub-package each: :mod:`glandseg.data` (discover, read, augment),
:mod:`glandseg.models` (U-Net, Mask R-CNN, registry, config, loading),
:mod:`glandseg.train` (training engine, checkpoints), :mod:`glandseg.infer` (Predictor,
post-processing), :mod:`glandseg.metrics` (official GlaS metrics), :mod:`glandseg.report`
(outputs, leaderboard, figures) and :mod:`glandseg.cli` (the ``glandseg`` command).

A *label image* everywhere is a 2-D integer array, 0 = background, 1..N = one gland each.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "GlandsegError",
    "ModelConfig",
    "Predictor",
    "load_model",
    "read_image",
    "read_label",
    "score",
    "write_label",
    "__version__",
]


class GlandsegError(Exception):
    """An error caused by the user's input (bad file, bad option), with a fix in its message.

    The CLI prints it as one line and exits with status 1.
    """


#: name → module that defines it; imported on first attribute access (PEP 562).
_LAZY = {
    "Predictor": "glandseg.infer.predictor",
    "load_model": "glandseg.models.store",
    "ModelConfig": "glandseg.models.config",
    "read_image": "glandseg.data.io",
    "read_label": "glandseg.data.io",
    "write_label": "glandseg.data.io",
}

if TYPE_CHECKING:  # for type checkers and IDEs only
    from glandseg.data.io import read_image, read_label, write_label
    from glandseg.infer.predictor import Predictor
    from glandseg.models.config import ModelConfig
    from glandseg.models.store import load_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'glandseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def score(pred: Any, truth: Any, *, split_gt: bool = False) -> dict:
    """The official GlaS metrics (object F1, object Dice, object Hausdorff in pixels).

    - two label images (2-D integer arrays ``(H, W)`` of one shape, 0 = background, ids
      used as given) → ``{"f1", "object_dice", "object_hausdorff"}`` of that image;
    - two dicts ``{stem: label image}`` with the same stems (``testA_3``, ``testB_1``, ...)
      → the summary that ``glandseg score`` writes: per test part (``testA``, ``testB``,
      ``other``) ``{"n_images", "pooled": {...}, "per_image": {...}}``, pooled being the
      official aggregation.

    ``split_gt``: score against each connected region of a ground-truth label as its own
    gland (see ``glandseg score --split-gt``); the prediction is never relabelled.
    """
    import numpy as np

    from glandseg.metrics.score import score_pairs, split_gt_components

    if isinstance(pred, Mapping) or isinstance(truth, Mapping):
        if not (isinstance(pred, Mapping) and isinstance(truth, Mapping)):
            raise TypeError("score: give two label images or two dicts {stem: label image}")
        if set(pred) != set(truth):
            odd = sorted(set(pred) ^ set(truth), key=str)
            raise GlandsegError(f"score: stems without a pair: {', '.join(map(str, odd[:5]))}")
        return score_pairs([(s, pred[s], truth[s]) for s in pred], split_gt=split_gt)
    from glandseg.metrics.glas import image_scores

    gt = np.asarray(truth)
    if split_gt:
        gt = split_gt_components(gt)
    p = np.asarray(pred)
    if p.shape != gt.shape:
        raise GlandsegError(f"score: prediction {p.shape} and truth {gt.shape} differ in shape")
    return image_scores(p, gt)
