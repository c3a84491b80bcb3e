"""Tiling for instance models and stitching of instances across tile borders.

An image larger than one tile is cut into overlapping windows (:func:`tile_windows`). Each
window's detections become :class:`Detection` objects in image coordinates (a probability
crop plus its offset), flagged ``truncated`` when their mask touches a window edge that is
not an image edge (the gland may continue in the neighbouring window).

**Stitching (merge by IoU in the shared region).** For every pair of overlapping windows,
the two windows see exactly the same pixels in their intersection, so the same gland has
nearly the same mask there in both, and two different glands hardly overlap. Detections of
the two windows are therefore matched by the IoU of their binarised masks *restricted to
the shared region*; pairs above ``match_iou`` are merged greedily, best IoU first, with a
union-find that never puts two detections of the same window into one group (the detector
already separated those). A group is one gland: its mask is the pixel-wise maximum of its
members' probabilities (a gland cut by a window edge is completed by its neighbour's
view; a gland larger than the overlap is assembled from its pieces) and its score is the
best member score. Glands wholly inside one window's overlap band are seen twice and merged
into one; a gland on a seam is never cut in two. Groups made only of truncated pieces are
painted below complete ones (see :func:`glandseg.infer.instances.groups_to_labels`), so a
stray, unmatched sliver at a window edge cannot take pixels from a whole gland.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # Mask R-CNN outputs only; the dense path runs without torch
    import torch

log = logging.getLogger(__name__)

Window = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)


@dataclass
class Detection:
    """One detected instance in some image frame (working scale or input resolution).

    ``prob``: float32 ``(h, w)`` mask probabilities covering rows ``y0:y0+h`` and columns
    ``x0:x0+w`` of the frame (0 outside the crop). ``tile``: index of the window it came
    from. ``truncated``: its mask touches a window edge inside the image.
    """

    score: float
    y0: int
    x0: int
    prob: np.ndarray
    tile: int = 0
    truncated: bool = False

    @property
    def y1(self) -> int:
        return self.y0 + self.prob.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.prob.shape[1]


def _starts(n: int, tile: int, step: int) -> list[int]:
    if n <= tile:
        return [0]
    return sorted(set(range(0, n - tile, step)) | {n - tile})


def tile_windows(h: int, w: int, tile: int, overlap: int) -> list[Window]:
    """Overlapping windows ``(y0, x0, y1, x1)`` of at most ``tile`` px covering an ``h × w``
    image, row-major; neighbours overlap by at least ``overlap`` px. One window if it fits."""
    th, tw = min(tile, h), min(tile, w)
    step = max(1, tile - overlap)
    return [(y, x, y + th, x + tw) for y in _starts(h, th, step) for x in _starts(w, tw, step)]


def detections_from_output(out: dict[str, torch.Tensor], window: Window, frame: tuple[int, int],
                           tile: int = 0, min_score: float = 0.0, eps: float = 1e-3,
                           binarize: float = 0.5) -> list[Detection]:
    """torchvision eval output of one window (``masks`` float ``(N, 1, th, tw)``, ``scores``
    ``(N,)``) → detections in frame coordinates, cropped to where the probability exceeds
    ``eps``. ``frame`` = ``(h, w)`` of the whole (scaled) image, to tell window edges inside
    the image (truncation) from image edges."""
    import torch

    wy0, wx0, wy1, wx1 = window
    fh, fw = frame
    dets = []
    scores = out["scores"].detach().float().cpu()
    masks = out["masks"]
    for i in torch.nonzero(scores >= min_score).flatten().tolist():
        m = masks[i, 0].detach().float()
        rows = torch.nonzero(m.amax(1) > eps).flatten()
        cols = torch.nonzero(m.amax(0) > eps).flatten()
        if rows.numel() == 0:
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = m[r0:r1, c0:c1].cpu().numpy().astype(np.float32)
        fg = crop >= binarize
        if fg.any():
            fr = np.nonzero(fg.any(1))[0]
            fc = np.nonzero(fg.any(0))[0]
            b0, b1, a0, a1 = r0 + fr[0], r0 + fr[-1] + 1, c0 + fc[0], c0 + fc[-1] + 1
        else:
            b0, b1, a0, a1 = r0, r1, c0, c1
        th, tw = wy1 - wy0, wx1 - wx0
        truncated = ((b0 == 0 and wy0 > 0) or (b1 == th and wy1 < fh)
                     or (a0 == 0 and wx0 > 0) or (a1 == tw and wx1 < fw))
        dets.append(Detection(float(scores[i]), wy0 + r0, wx0 + c0, crop, tile, bool(truncated)))
    return dets


def _intersect(a: Window, b: Window) -> Window | None:
    y0, x0, y1, x1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _binary_in(d: Detection, r: Window, threshold: float) -> np.ndarray:
    """``d``'s binary mask on region ``r`` (bool ``(r.h, r.w)``)."""
    out = np.zeros((r[2] - r[0], r[3] - r[1]), bool)
    c = _intersect((d.y0, d.x0, d.y1, d.x1), r)
    if c is not None:
        out[c[0] - r[0]:c[2] - r[0], c[1] - r[1]:c[3] - r[1]] = (
            d.prob[c[0] - d.y0:c[2] - d.y0, c[1] - d.x0:c[3] - d.x0] >= threshold)
    return out


def shared_iou(a: Detection, b: Detection, region: Window, threshold: float = 0.5) -> float:
    """IoU of two detections' binary masks (probability ≥ ``threshold``) within ``region``."""
    ma, mb = _binary_in(a, region, threshold), _binary_in(b, region, threshold)
    union = np.count_nonzero(ma | mb)
    return np.count_nonzero(ma & mb) / union if union else 0.0


def union_by_window(window_of: Sequence[int], pairs: Iterable[tuple[float, int, int]]
                    ) -> list[int]:
    """Union-find over items ``0..n-1`` (``window_of[i]``: the window item ``i`` comes
    from): the ``(score, i, j)`` pairs are merged in the order given (the caller sorts them,
    best first), except a merge that would put two items of one window in one group.
    Returns each item's group root (an item index). Shared by :func:`stitch` (detections)
    and :mod:`glandseg.infer.slide` (window labels)."""
    parent = list(range(len(window_of)))
    windows: dict[int, set[int]] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in pairs:
        ri, rj = find(i), find(j)
        if ri == rj:
            continue
        si = windows.get(ri, {int(window_of[ri])})
        sj = windows.get(rj, {int(window_of[rj])})
        if si & sj:
            continue
        parent[rj] = ri
        windows[ri] = si | sj
        windows.pop(rj, None)
    return [find(i) for i in range(len(parent))]


def stitch(dets: list[Detection], windows: list[Window], match_iou: float = 0.4,
           threshold: float = 0.5) -> list[list[Detection]]:
    """Group the detections of overlapping windows that show the same gland (see the module
    docstring). Returns groups (lists of detections, at most one per window), one per gland."""
    by_tile: dict[int, list[int]] = {}
    for i, d in enumerate(dets):
        by_tile.setdefault(d.tile, []).append(i)
    pairs: list[tuple[float, int, int]] = []
    for ti in range(len(windows)):
        for tj in range(ti + 1, len(windows)):
            region = _intersect(windows[ti], windows[tj])
            if region is None:
                continue
            for i in by_tile.get(ti, []):
                a = dets[i]
                ra = _intersect((a.y0, a.x0, a.y1, a.x1), region)
                if ra is None:
                    continue
                for j in by_tile.get(tj, []):
                    b = dets[j]
                    if _intersect((b.y0, b.x0, b.y1, b.x1), ra) is None:
                        continue
                    iou = shared_iou(a, b, region, threshold)
                    if iou >= match_iou:
                        pairs.append((iou, i, j))
    pairs.sort(key=lambda p: -p[0])
    roots = union_by_window([d.tile for d in dets], pairs)
    groups: dict[int, list[Detection]] = {}
    for i, d in enumerate(dets):
        groups.setdefault(roots[i], []).append(d)
    log.debug("stitched %d detections from %d windows into %d groups", len(dets),
              len(windows), len(groups))
    return list(groups.values())
