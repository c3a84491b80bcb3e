"""Inference for instance models (Mask R-CNN): image → non-overlapping instance labels.

:func:`predict_instances` (called by :meth:`glandseg.infer.predictor.Predictor.predict` for
task ``instances``):

1. scale the ``uint8 (H, W, 3)`` image by ``predictor.scale`` to float [0, 1] (bilinear,
   antialiased, as for the dense models); *no* mean/std here: the model normalises;
2. run the model once if the scaled image fits in ``predictor.tiling.tile``, else on
   overlapping windows (``tile``/``overlap``/``batch_size``), stitching instances across
   window borders (:mod:`glandseg.infer.stitch`: merge by mask IoU in the shared region);
3. resample each instance's mask *probabilities* to the input resolution (bilinear), then
   build the label image (:func:`groups_to_labels`): drop instances below
   ``score_threshold``, binarise at ``mask_threshold``, give each pixel to the
   highest-priority instance (complete before truncated-only, then higher score), remove
   pieces below ``min_area`` input pixels, relabel 1..N.

Flip TTA (``predictor.tta``) is ignored for instances: averaging detections needs box/mask
fusion that this module does not do. The post-processing parameters, their defaults and
ranges are :class:`glandseg.models.config.InstancePost` (an unknown key is an error).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from glandseg.infer.postprocess import relabel_sequential
from glandseg.infer.stitch import Detection, detections_from_output, stitch, tile_windows
from glandseg.models.config import InstancePost, check_keys

log = logging.getLogger(__name__)

#: The default parameters (from :class:`InstancePost`, the one place they are set).
DEFAULTS = InstancePost().as_dict()
GRID = {
    "score_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "mask_threshold": [0.4, 0.5, 0.6],
    "min_area": [100, 300],
}


def _scaled(image: np.ndarray, scale: float) -> torch.Tensor:
    """``uint8 (H, W, 3)`` → float ``(3, h, w)`` in [0, 1] at ``scale`` (not normalised)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    if scale != 1.0:
        h, w = x.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True,
                          align_corners=False)[0].clamp(0, 1)
    return x


def _resample(d: Detection, sy: float, sx: float, shape: tuple[int, int]) -> Detection | None:
    """``d`` (frame of size ``shape / (sy, sx)``) → the frame of size ``shape`` (bilinear,
    pixel-centre aligned like ``F.interpolate(align_corners=False)`` on the whole map)."""
    H, W = shape
    ch, cw = d.prob.shape
    Y0, X0 = max(0, math.floor(d.y0 * sy)), max(0, math.floor(d.x0 * sx))
    Y1, X1 = min(H, math.ceil(d.y1 * sy)), min(W, math.ceil(d.x1 * sx))
    if Y1 <= Y0 or X1 <= X0:
        return None
    ys = (torch.arange(Y0, Y1, dtype=torch.float32) + 0.5) / sy - 0.5 - d.y0
    xs = (torch.arange(X0, X1, dtype=torch.float32) + 0.5) / sx - 0.5 - d.x0
    gy = (2 * ys + 1) / ch - 1
    gx = (2 * xs + 1) / cw - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    src = torch.from_numpy(d.prob)[None, None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return Detection(d.score, Y0, X0, out[0, 0].numpy(), d.tile, d.truncated)


@torch.no_grad()
def detect_groups(predictor, image: np.ndarray, min_score: float | None = None
                  ) -> list[list[Detection]]:
    """Instances of ``image`` (``uint8 (H, W, 3)``) at the input resolution, as stitched
    groups of detections with score ≥ ``min_score`` (default: the config's
    ``score_threshold``). Each group is one gland (see :mod:`glandseg.infer.stitch`)."""
    if min_score is None:
        min_score = _post(predictor).score_threshold
    H, W = image.shape[:2]
    x = _scaled(image, predictor.scale)
    h, w = x.shape[-2:]
    t = predictor.tiling
    windows = tile_windows(h, w, t.tile, t.overlap)
    model = predictor.model
    model.eval()
    dets: list[Detection] = []
    for i in range(0, len(windows), max(1, t.batch_size)):
        chunk = windows[i:i + max(1, t.batch_size)]
        tiles = [x[:, y0:y1, x0:x1].to(predictor.device) for y0, x0, y1, x1 in chunk]
        outs = model(tiles)
        for k, (win, out) in enumerate(zip(chunk, outs, strict=True)):
            dets += detections_from_output(out, win, (h, w), tile=i + k, min_score=min_score)
    groups = stitch(dets, windows) if len(windows) > 1 else [[d] for d in dets]
    if (h, w) != (H, W):
        sy, sx = H / h, W / w
        groups = [[r for d in g if (r := _resample(d, sy, sx, (H, W))) is not None] for g in groups]
        groups = [g for g in groups if g]
    return groups


def groups_to_labels(groups: list[list[Detection]], shape: tuple[int, int],
                     score_threshold: float = 0.5, mask_threshold: float = 0.5,
                     min_area: int = 100) -> np.ndarray:
    """Stitched instance groups → labels ``int32 shape``, 0 = background, 1..N.

    Members below ``score_threshold`` are dropped; a group's probability is the maximum over
    its remaining members, binarised at ``mask_threshold``. Overlaps go to the group of
    higher priority: complete (some member not truncated by a window edge) before
    truncated-only, then higher score. Connected pieces under ``min_area`` pixels are removed.
    """
    H, W = shape
    labels = np.zeros((H, W), np.int32)
    masks = []
    for g in groups:
        members = [d for d in g if d.score >= score_threshold]
        if not members:
            continue
        y0, x0 = min(d.y0 for d in members), min(d.x0 for d in members)
        y1, x1 = max(d.y1 for d in members), max(d.x1 for d in members)
        prob = np.zeros((y1 - y0, x1 - x0), np.float32)
        for d in members:
            sub = prob[d.y0 - y0:d.y1 - y0, d.x0 - x0:d.x1 - x0]
            np.maximum(sub, d.prob, out=sub)
        fg = prob >= mask_threshold
        if not fg.any():
            continue
        key = (any(not d.truncated for d in members), max(d.score for d in members))
        masks.append((key, y0, x0, fg))
    masks.sort(key=lambda m: m[0])
    for k, (_, y0, x0, fg) in enumerate(masks, start=1):
        labels[y0:y0 + fg.shape[0], x0:x0 + fg.shape[1]][fg] = k
    if min_area > 0:
        for k, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None:
                continue
            obj = labels[sl] == k
            pieces, n = ndi.label(obj)
            if n == 1 and obj.sum() >= min_area:
                continue
            sizes = np.bincount(pieces.ravel())
            small = sizes < min_area
            small[0] = False
            labels[sl][small[pieces]] = 0
    return relabel_sequential(labels)


def _post(predictor, params: Mapping | None = None) -> InstancePost:
    """The predictor's checked ``InstancePost`` with ``params`` (some keys) replacing its own."""
    post = predictor.model_config.postprocess
    if not isinstance(post, InstancePost):
        raise ValueError(f"a {predictor.task!r} model has no instance post-processing")
    return post.updated(params) if params else post


def predict_instances(predictor, image: np.ndarray, params: Mapping | None = None
                      ) -> np.ndarray:
    """``uint8 (H, W, 3)`` → instance labels ``int32 (H, W)``, 0 = background, with the
    config's ``postprocess`` (``score_threshold``, ``mask_threshold``, ``min_area``), or
    with ``params`` replacing those it names (checked: an unknown key is an error)."""
    if getattr(predictor, "tta", False):
        log.debug("flip TTA is not applied to instance models")
    post = _post(predictor, params)
    groups = detect_groups(predictor, image, min_score=post.score_threshold)
    return groups_to_labels(groups, image.shape[:2], **post.as_dict())


def tune_instances(predictor, val_data: list[tuple[str, np.ndarray, np.ndarray]],
                   grid: Mapping | None = None) -> tuple[dict, float]:
    """Best ``score_threshold``/``mask_threshold``/``min_area`` on ``val_data`` =
    ``[(name, image uint8 (H, W, 3), truth labels (H, W))]``, by pooled ``F1 + object Dice``
    (as :func:`glandseg.train.tune.tune_postprocess`; the one grid search is
    :func:`glandseg.metrics.gridsearch.grid_search`). Parameters absent from ``grid`` keep
    the config's values. Detections are computed once per image. Returns
    ``(params, pooled object Dice at those params)``."""
    from glandseg.metrics.gridsearch import grid_search  # metrics: below infer, no cycle

    grid = dict(grid or GRID)
    check_keys("tuning grid of task 'instances'", "", grid, InstancePost.names())
    base = _post(predictor).as_dict()
    floor = min(grid.get("score_threshold", [base["score_threshold"]]))
    dets = [(n, detect_groups(predictor, img, min_score=floor), t) for n, img, t in val_data]
    return grid_search(grid, dets, lambda g, shape, params: groups_to_labels(g, shape, **params),
                       base=base)
