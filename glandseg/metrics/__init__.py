"""Official GlaS metrics (object F1, object Dice, object Hausdorff) and pixel metrics.

Label images everywhere: 2-D integer arrays ``(H, W)``, 0 = background, ids as given.
See :mod:`glandseg.metrics.glas` for the definitions and conventions,
:mod:`glandseg.metrics.score` for scoring folders and aggregating per test part.
"""

from __future__ import annotations

import logging

from glandseg.metrics.glas import (
    ObjectStats,
    hausdorff_distance,
    image_scores,
    image_stats,
    object_dice,
    object_f1,
    object_hausdorff,
)
from glandseg.metrics.pixel import bce, count_objects, count_score, pixel_dice
from glandseg.metrics.score import (
    ImageResult,
    evaluate_dirs,
    evaluate_pairs,
    format_table,
    per_image_table,
    score_dirs,
    score_pairs,
    summarize,
)

log = logging.getLogger(__name__)

__all__ = [
    "ObjectStats",
    "ImageResult",
    "image_stats",
    "image_scores",
    "object_f1",
    "object_dice",
    "object_hausdorff",
    "hausdorff_distance",
    "pixel_dice",
    "bce",
    "count_objects",
    "count_score",
    "evaluate_pairs",
    "evaluate_dirs",
    "summarize",
    "score_pairs",
    "score_dirs",
    "per_image_table",
    "format_table",
]
