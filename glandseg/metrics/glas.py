"""Official GlaS object-level metrics: object F1, object Dice, object Hausdorff.

Sirinukunwattana et al., "Gland segmentation in colon histology images: the GlaS
challenge contest", Medical Image Analysis 35 (2017), and the organisers' MATLAB code
(``F1score.m``, ``ObjectDice.m``, ``ObjectHausdorff.m``).

Inputs are *instance label images*: 2-D integer arrays of shape ``(H, W)`` (any
non-negative integer dtype), 0 = background, every other value one object. Ids are
taken as given: a prediction is never relabelled, binarised or split into connected
components, and ids need not be contiguous (``{0, 3, 70000}`` is two objects).

Definitions (``P_i`` predicted objects, ``G_j`` ground-truth objects, ``|.|`` area in
pixels):

- ``G*(P_i)``: the GT object with the largest intersection with ``P_i`` (ties: the
  smallest id, like MATLAB's ``mode``); none when ``P_i`` touches no GT object.
  ``P*(G_j)`` likewise.
- **F1**: ``P_i`` is a true positive when ``|P_i ∩ G*(P_i)| > 0.5 |G*(P_i)|``; every
  other predicted object is a false positive (a second prediction matching an already
  matched GT object would also count as FP, though disjoint objects cannot both cover
  more than half of it); FN = GT objects matched by no TP. ``F1 = 2TP / (2TP + FP + FN)``,
  1 when there are no objects at all.
- **Object Dice**: ``0.5 [Σ_i w_i D(P_i, G*(P_i)) + Σ_j v_j D(G_j, P*(G_j))]`` with
  ``w_i = |P_i| / Σ|P|``, ``v_j = |G_j| / Σ|G|``; ``D = 0`` for an object without match.
  1 when both images are empty, 0 when exactly one is (as the official code).
- **Object Hausdorff**: the same weighting of the Hausdorff distance
  ``H(A, B) = max(max_{a∈A} min_{b∈B} |a−b|, max_{b∈B} min_{a∈A} |a−b|)`` over *all*
  pixels of the two objects (Euclidean, in pixels, (row, col) coordinates). An object
  that overlaps nothing is paired with the object of the other image nearest to it in
  Hausdorff distance (ties: smallest id). 0 when both images are empty.

**Convention when the other image has no objects at all** (Hausdorff only). The
official MATLAB code gives ``Inf`` there (``Hausdorff`` of an empty set), which makes
any pooled mean infinite. Here every object whose other image is empty gets the
*empty distance*, by default the image diagonal ``hypot(H - 1, W - 1)`` (the largest
distance between two pixels of the image, an upper bound of any finite Hausdorff
distance in it); pass ``empty_distance=math.inf`` to reproduce the official value.
When one side has no objects at all (in the image, or, pooled, in the whole part)
its empty weighted term takes the value of the other term, so the score is the other
side's area-weighted mean distance (the diagonal); with ``empty_distance=inf`` this is
``Inf`` exactly as in the official code.

Aggregation: :class:`ObjectStats` holds *sums* (TP/FP/FN counts, object areas and
area-weighted Dice and Hausdorff values) for one image; adding stats pools them, so the
official pooled score of a test part (all objects of the part weighted by area over the
part's total area, F1 from summed TP/FP/FN) and the mean of per-image scores come from
one pass (see :func:`image_stats` and :meth:`ObjectStats.pool`).

Implementation: one contingency table per image (``np.bincount`` over
``pred_id * (K + 1) + gt_id`` after mapping ids to ``1..n``; ids already ``1..n`` are
used without a copy) gives areas, best matches, Dice and F1 without per-object masks.
The boundary pixels of all objects (a pixel with a 4-neighbour outside its object, or on
the image border) come from one pass over each label image and give the bounding boxes.
A Hausdorff distance is computed exactly on bounding-box crops: for ``a ∈ A \\ B`` the
nearest pixel of ``B`` is always a boundary pixel of ``B`` (any interior pixel has a
neighbour one step closer to ``a``), so ``max_{a∈A} d(a, B)`` is the largest distance
from the pixels of ``A \\ B`` to a KD-tree of ``B``'s boundary pixels (0 when
``A ⊆ B``). The query points of ``A`` may not be reduced to its boundary (``B`` may
surround ``A``), but most need no query: ``d(., B)`` is 1-Lipschitz, so a tile of pixels
whose centre distance plus radius does not exceed a distance already reached cannot hold
the maximum and is skipped (bound and prune on 32- then 8-pixel tiles); the pixels left
are queried, so the value is the distance of one pixel pair, identical to a query of all
pixels. The search for the nearest object of an unmatched one visits candidates by a
bounding-box lower bound of the Hausdorff distance, stops early, and abandons a candidate
as soon as one of its pixels is no nearer than the best distance so far.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

__all__ = [
    "ObjectStats",
    "image_stats",
    "image_scores",
    "object_f1",
    "object_dice",
    "object_hausdorff",
    "hausdorff_distance",
]

_DENSE_TABLE_MAX = 1 << 22  # cells of a dense contingency table before going sparse


@dataclass(frozen=True)
class ObjectStats:
    """Poolable object-level sums for one image, or pooled over several.

    Fields (all sums over the objects of the image(s)): ``n_images``; ``n_pred`` and
    ``n_gt`` object counts; ``tp``/``fp``/``fn``; ``area_pred`` = ``Σ|P_i|`` and
    ``area_gt`` = ``Σ|G_j|`` in pixels; ``dice_pred`` = ``Σ|P_i| D(P_i, G*(P_i))`` and
    ``dice_gt`` = ``Σ|G_j| D(G_j, P*(G_j))``; ``hausdorff_pred``/``hausdorff_gt`` the
    same with the Hausdorff distance (NaN when it was not computed).

    ``a + b`` and :meth:`pool` add the sums; :attr:`f1`, :attr:`object_dice` and
    :attr:`object_hausdorff` turn sums into scores, so pooled stats give the official
    pooled (area-weighted over the whole part) scores.
    """

    n_images: int = 0
    n_pred: int = 0
    n_gt: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    area_pred: int = 0
    area_gt: int = 0
    dice_pred: float = 0.0
    dice_gt: float = 0.0
    hausdorff_pred: float = 0.0
    hausdorff_gt: float = 0.0

    def __add__(self, other: ObjectStats) -> ObjectStats:
        if not isinstance(other, ObjectStats):
            return NotImplemented
        return ObjectStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    @classmethod
    def pool(cls, stats: Iterable[ObjectStats]) -> ObjectStats:
        """Sum the stats of several images (empty input: all-zero stats); float sums are
        correctly rounded (``math.fsum``), so the result does not depend on the order."""
        stats = list(stats)
        return cls(**{
            f.name: (math.fsum(getattr(s, f.name) for s in stats) if f.type in (float, "float")
                     else sum(getattr(s, f.name) for s in stats))
            for f in fields(cls)
        })

    @property
    def f1(self) -> float:
        """Object F1 ``2TP / (2TP + FP + FN)``; 1.0 when there are no objects at all."""
        denom = 2 * self.tp + self.fp + self.fn
        return 1.0 if denom == 0 else 2.0 * self.tp / denom

    @property
    def object_dice(self) -> float:
        """Object Dice in [0, 1]; 1.0 when both sides are empty, 0.0 when one is."""
        if self.n_pred == 0 and self.n_gt == 0:
            return 1.0
        if self.n_pred == 0 or self.n_gt == 0:
            return 0.0
        return 0.5 * (self.dice_pred / self.area_pred + self.dice_gt / self.area_gt)

    @property
    def object_hausdorff(self) -> float:
        """Object Hausdorff distance in pixels; 0.0 when both sides are empty.

        A side without objects takes the other side's term (see the module docstring).
        """
        if self.n_pred == 0 and self.n_gt == 0:
            return 0.0
        if self.n_pred == 0:
            return self.hausdorff_gt / self.area_gt
        if self.n_gt == 0:
            return self.hausdorff_pred / self.area_pred
        return 0.5 * (
            self.hausdorff_pred / self.area_pred + self.hausdorff_gt / self.area_gt
        )

    def scores(self) -> dict[str, float]:
        """``{"f1", "object_dice", "object_hausdorff"}`` as floats."""
        return {
            "f1": self.f1,
            "object_dice": self.object_dice,
            "object_hausdorff": self.object_hausdorff,
        }


# --------------------------------------------------------------------------- objects


@dataclass
class _Objects:
    """The objects of one label image, ids mapped to ``1..n`` in ascending id order.

    Boundary pixels (a pixel of an object with a 4-neighbour outside it, or on the image
    border) are found for all objects at once on first use; they give the bounding boxes
    (an object's extreme pixels are boundary pixels) and the KD-trees.
    """

    compact: np.ndarray  # (H, W) int, 0 = background, 1..n
    ids: np.ndarray  # (n,) original ids, ascending
    areas: np.ndarray  # (n + 1,) int64, areas[0] = 0
    _boxes: np.ndarray | None = None  # (n, 4) int64: r0, r1 (excl.), c0, c1 (excl.)
    _edge: np.ndarray | None = None  # (m, 2) float64 boundary pixels, grouped by object
    _edge_start: np.ndarray | None = None  # (n + 1,) offsets of each object's group
    _trees: dict[int, cKDTree] = field(default_factory=dict)
    _masks: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.ids.size)

    def _find_boundaries(self) -> None:
        c = self.compact
        h, w = c.shape
        edge = np.ones((h, w), dtype=bool)  # the image border counts as outside
        inner = edge[1:-1, 1:-1]
        vert = c[1:, 1:-1] != c[:-1, 1:-1]  # (h - 1, w - 2): differs from the pixel below
        horiz = c[1:-1, 1:] != c[1:-1, :-1]  # (h - 2, w - 1): differs from the pixel right
        np.logical_or(vert[1:], vert[:-1], out=inner)
        inner |= horiz[:, 1:]
        inner |= horiz[:, :-1]
        edge &= c > 0
        rr, cc = np.nonzero(edge)
        lab = c[rr, cc]
        order = np.argsort(lab, kind="stable")
        rr, cc = rr[order], cc[order]
        start = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(lab, minlength=self.n + 1)[1:], out=start[1:])
        self._edge = np.stack((rr, cc), axis=1).astype(np.float64)
        self._edge_start = start
        if self.n:
            first = start[:-1]
            self._boxes = np.stack(
                (np.minimum.reduceat(rr, first), np.maximum.reduceat(rr, first) + 1,
                 np.minimum.reduceat(cc, first), np.maximum.reduceat(cc, first) + 1),
                axis=1,
            ).astype(np.int64)
        else:
            self._boxes = np.zeros((0, 4), dtype=np.int64)

    @property
    def boxes(self) -> np.ndarray:
        if self._boxes is None:
            self._find_boundaries()
        return self._boxes

    def crop(self, k: int, pad: int = 0) -> tuple[slice, slice]:
        r0, r1, c0, c1 = self.boxes[k - 1]
        h, w = self.compact.shape
        return (
            slice(max(r0 - pad, 0), min(r1 + pad, h)),
            slice(max(c0 - pad, 0), min(c1 + pad, w)),
        )

    def mask(self, k: int) -> np.ndarray:
        """Bool mask of object ``k`` on its bounding-box crop :meth:`crop` ``(k)`` (cached)."""
        m = self._masks.get(k)
        if m is None:
            m = self.compact[self.crop(k)] == k
            self._masks[k] = m
        return m

    def tree(self, k: int) -> cKDTree:
        """KD-tree of the boundary pixels (4-connectivity) of object ``k``."""
        t = self._trees.get(k)
        if t is None:
            if self._edge is None:
                self._find_boundaries()
            t = cKDTree(self._edge[self._edge_start[k - 1]: self._edge_start[k]])
            self._trees[k] = t
        return t


def _as_labels(labels: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name}: a label image must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: label image must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise ValueError(f"{name}: label image has negative values")
    if arr.dtype == np.uint64:
        if arr.size and int(arr.max()) >= 2**63:
            raise ValueError(f"{name}: label ids must be below 2**63")
        arr = arr.astype(np.int64)
    return arr


def _objects(labels: np.ndarray) -> _Objects:
    flat = labels.ravel()
    mx = int(flat.max()) if flat.size else 0
    if mx <= max(4 * flat.size, 1 << 16):
        counts = np.bincount(flat, minlength=mx + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        if ids.size == mx and labels.dtype.itemsize <= 4:  # ids already 1..n: no relabelling
            compact = labels
        else:
            lut = np.zeros(mx + 1, dtype=np.int32)
            lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
            compact = lut[labels]
        areas = np.concatenate(([0], counts[ids])).astype(np.int64)
    else:  # huge ids: sort instead of a lookup table
        uniq, inv, cnt = np.unique(flat, return_inverse=True, return_counts=True)
        inv = inv.reshape(labels.shape).astype(np.int32)
        if uniq[0] == 0:
            ids, compact, areas = uniq[1:], inv, np.concatenate(([0], cnt[1:]))
        else:
            ids, compact, areas = uniq, inv + 1, np.concatenate(([0], cnt))
        areas = areas.astype(np.int64)
    return _Objects(compact=compact, ids=ids, areas=areas)


def _overlaps(P: _Objects, G: _Objects) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero intersections: ``(p, g, count)`` arrays, p in 1..nP, g in 1..nG."""
    k = G.n + 1
    cells = (P.n + 1) * k
    if cells <= _DENSE_TABLE_MAX:
        dt = np.int32 if cells < 2**31 else np.int64
        codes = P.compact.astype(dt, copy=False).ravel() * dt(k) + G.compact.ravel()
        table = np.bincount(codes, minlength=cells).reshape(P.n + 1, k)
        p, g = np.nonzero(table[1:, 1:])
        cnt = table[p + 1, g + 1]
        return p + 1, g + 1, cnt.astype(np.int64)
    fg = (P.compact > 0) & (G.compact > 0)
    codes = P.compact[fg].astype(np.int64) * k + G.compact[fg]
    uniq, cnt = np.unique(codes, return_counts=True)
    return uniq // k, uniq % k, cnt.astype(np.int64)


def _best_match(
    owner: np.ndarray, other: np.ndarray, cnt: np.ndarray, n_owner: int
) -> tuple[np.ndarray, np.ndarray]:
    """For owners ``1..n``: the partner with the largest overlap (ties: smallest id).

    Returns ``best`` and ``inter`` of shape ``(n + 1,)`` (index 0 unused); 0 = no overlap.
    """
    best = np.zeros(n_owner + 1, dtype=np.int64)
    inter = np.zeros(n_owner + 1, dtype=np.int64)
    if owner.size:
        order = np.lexsort((other, -cnt, owner))
        o = owner[order]
        first = np.ones(o.size, dtype=bool)
        first[1:] = o[1:] != o[:-1]
        best[o[first]] = other[order][first]
        inter[o[first]] = cnt[order][first]
    return best, inter


# ------------------------------------------------------------------------- Hausdorff


#: Bound-and-prune of :func:`_farthest`: the tile side (pixels) of the first pass, done on
#: the mask, and of the following passes, done on pixel lists, coarse to fine, each run
#: when more than ``_PRUNE_MIN`` pixels remain (below that, querying them all is cheaper).
_MASK_TILE = 32
_POINT_TILES = (8,)
_PRUNE_MIN = 2048
_SLACK = 1e-9  # added to upper bounds: float rounding of centre distance + radius


def _tile_bounds(tiles_r: np.ndarray, tiles_c: np.ndarray, reps: np.ndarray, s: int,
                 origin: tuple[int, int], tree: cKDTree) -> tuple[float, np.ndarray]:
    """``(lb, ub)`` for ``s x s`` tiles (row/col tile indices): ``lb`` the largest distance
    of the real pixels ``reps`` (one per tile, image coordinates), ``ub`` per tile the
    distance of its centre plus the centre's largest distance to a tile pixel."""
    half = (s - 1) / 2.0
    centres = np.stack((tiles_r * s + (half + origin[0]), tiles_c * s + (half + origin[1])),
                       axis=1)
    lb = float(tree.query(reps.astype(np.float64))[0].max())
    ub = tree.query(centres)[0] + (half * math.sqrt(2.0) + _SLACK)
    return lb, ub


def _farthest(mask: np.ndarray, origin: tuple[int, int], tree: cKDTree, cap: float) -> float:
    """``max`` over the True pixels of ``mask`` of the distance to the points of ``tree``.

    ``mask``: bool ``(h, w)``, a crop whose pixel ``(0, 0)`` is image pixel ``origin``;
    at least one pixel True. Exact, except that once the maximum is known to be at least
    ``cap`` a value ``>= cap`` (a distance of one of the pixels) may be returned early.

    Bound and prune, exact because the distance to a set is 1-Lipschitz: the pixels are
    grouped in ``s x s`` tiles; the distance ``d(c)`` of each tile's centre bounds its
    pixels by ``d(c) + (s - 1) / sqrt(2)``, one real pixel per tile gives a lower bound
    ``lb`` of the maximum, and tiles whose bound does not exceed ``lb`` are dropped. The
    remaining pixels are queried one by one, so the result is the distance of a pixel,
    the same float as a query of all pixels.
    """
    r0, c0 = origin
    lb = 0.0
    h, w = mask.shape
    s = _MASK_TILE
    if h * w > 4 * _PRUNE_MIN and np.count_nonzero(mask) > _PRUNE_MIN:
        th, tw = -(-h // s), -(-w // s)
        padded = np.zeros((th * s, tw * s), dtype=bool)
        padded[:h, :w] = mask
        occupied = padded.reshape(th, s, tw * s).any(axis=1).reshape(th, tw, s).any(axis=2)
        ti, tj = np.nonzero(occupied)
        blocks = padded.reshape(th, s, tw, s)[ti, :, tj, :].reshape(ti.size, s * s)
        first = blocks.argmax(axis=1)  # a True pixel of each tile
        reps = np.stack((ti * s + first // s + r0, tj * s + first % s + c0), axis=1)
        lb, ub = _tile_bounds(ti, tj, reps, s, origin, tree)
        if lb >= cap:
            return lb
        keep = ub > lb
        if not keep.all():
            grid = np.zeros((th, tw), dtype=bool)
            grid[ti[keep], tj[keep]] = True
            mask = mask & np.repeat(np.repeat(grid, s, axis=0), s, axis=1)[:h, :w]
    pts = np.argwhere(mask)
    for s in _POINT_TILES:
        if len(pts) <= _PRUNE_MIN:
            break
        tr, tc = pts[:, 0] // s, pts[:, 1] // s
        tw = int(tc.max()) + 1
        key = tr * tw + tc
        rep = np.full(int(key.max()) + 1, -1, dtype=np.int64)
        rep[key] = np.arange(key.size)  # some pixel of each tile
        tiles = np.flatnonzero(rep >= 0)
        t_lb, ub = _tile_bounds(tiles // tw, tiles % tw, pts[rep[tiles]] + origin, s, origin,
                                tree)
        lb = max(lb, t_lb)
        if lb >= cap:
            return lb
        keep = np.zeros(rep.size, dtype=bool)
        keep[tiles[ub > lb]] = True
        pts = pts[keep[key]]
    if len(pts):
        lb = max(lb, float(tree.query((pts + origin).astype(np.float64))[0].max()))
    return lb


def _directed(X: _Objects, x: int, Y: _Objects, y: int, cap: float = math.inf) -> float:
    """``max_{a ∈ X_x} min_{b ∈ Y_y} |a − b|`` over all pixels, exactly.

    With a finite ``cap``, a value ``>= cap`` may be returned as soon as the distance is
    known to reach it (see :func:`_farthest`).
    """
    rs, cs = X.crop(x)
    outside = X.mask(x) & (Y.compact[rs, cs] != y)
    if not outside.any():
        return 0.0
    return _farthest(outside, (rs.start, cs.start), Y.tree(y), cap)


class _Hausdorff:
    """Pairwise Hausdorff distances between objects of P and G, cached per pair."""

    def __init__(self, P: _Objects, G: _Objects):
        self.P, self.G = P, G
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, p: int, g: int, cap: float = math.inf) -> float:
        """``H(P_p, G_g)``; with a finite ``cap``, possibly a value ``>= cap`` instead."""
        key = (p, g)
        h = self.cache.get(key)
        if h is None:
            h = _directed(self.P, p, self.G, g, cap)
            if h >= cap:
                return h  # not exact: not cached
            h = max(h, _directed(self.G, g, self.P, p, cap))
            if h >= cap:
                return h
            self.cache[key] = h
        return h

    def nearest(self, p: int | None = None, g: int | None = None) -> float:
        """Distance from P object ``p`` (or G object ``g``) to its nearest object of the other image."""
        X, Y = (self.P, self.G) if p is not None else (self.G, self.P)
        x = p if p is not None else g
        assert x is not None and Y.n > 0
        bx = X.boxes[x - 1]
        lb = np.abs(Y.boxes - bx).max(axis=1)  # |Δ extreme row/col| ≤ H(A, B)
        best_h = math.inf
        for j in np.lexsort((np.arange(Y.n), lb)):
            if lb[j] >= best_h:
                break
            k = int(j) + 1
            # only the distance matters (ties give the same value), so a candidate known
            # to be no nearer than the best so far is abandoned early
            h = self(x, k, best_h) if p is not None else self(k, x, best_h)
            best_h = min(best_h, h)
        return best_h


def hausdorff_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Hausdorff distance (pixels, Euclidean) between two boolean masks of one shape ``(H, W)``.

    Over all pixels of the two sets; 0.0 when both are empty, ``inf`` when one is.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"masks must be 2-D of one shape, got {a.shape} and {b.shape}")
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.inf
    P, G = _objects(a.astype(np.uint8)), _objects(b.astype(np.uint8))
    return _Hausdorff(P, G)(1, 1)


# --------------------------------------------------------------------------- public


def image_stats(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    hausdorff: bool = True,
    empty_distance: float | None = None,
) -> ObjectStats:
    """Object-level sums of one image (see :class:`ObjectStats`).

    ``pred``, ``gt``: instance label images of one shape ``(H, W)``, non-negative
    integers (or bool), 0 = background; ids used as given. ``hausdorff=False`` skips
    the (slower) Hausdorff part and leaves its sums NaN. ``empty_distance``: the
    Hausdorff distance given to an object when the other image has no object, default
    the image diagonal ``hypot(H - 1, W - 1)`` (``math.inf`` = official MATLAB).
    Raises ``ValueError`` for arrays that are not label images of one shape.
    """
    pred = _as_labels(pred, "pred")
    gt = _as_labels(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred has shape {pred.shape} but gt has shape {gt.shape}")
    P, G = _objects(pred), _objects(gt)
    p_idx, g_idx, cnt = _overlaps(P, G)
    best_g, inter_p = _best_match(p_idx, g_idx, cnt, P.n)
    best_p, inter_g = _best_match(g_idx, p_idx, cnt, G.n)
    area_p, area_g = P.areas[1:], G.areas[1:]

    # Dice per object (0 when unmatched: inter = 0); Σ|X| D = |X| 2 I / (|X| + |Y*|)
    dice_p = 2.0 * inter_p[1:] / (area_p + G.areas[best_g[1:]])
    dice_g = 2.0 * inter_g[1:] / (area_g + P.areas[best_p[1:]])

    # F1: TP when the prediction covers more than half of its best GT object
    cand = (best_g[1:] > 0) & (2 * inter_p[1:] > G.areas[best_g[1:]])
    tp = int(np.unique(best_g[1:][cand]).size)

    if hausdorff:
        h_p, h_g = _hausdorff_terms(P, G, best_g, best_p, pred.shape, empty_distance)
        haus_pred, haus_gt = _weighted_sum(area_p, h_p), _weighted_sum(area_g, h_g)
    else:
        haus_pred = haus_gt = math.nan
    return ObjectStats(
        n_images=1,
        n_pred=P.n,
        n_gt=G.n,
        tp=tp,
        fp=P.n - tp,
        fn=G.n - tp,
        area_pred=int(area_p.sum()),
        area_gt=int(area_g.sum()),
        dice_pred=_weighted_sum(area_p, dice_p),
        dice_gt=_weighted_sum(area_g, dice_g),
        hausdorff_pred=haus_pred,
        hausdorff_gt=haus_gt,
    )


def _weighted_sum(areas: np.ndarray, values: np.ndarray) -> float:
    """``Σ areas[i] · values[i]``, the sum correctly rounded (``math.fsum``), so that it does
    not depend on the order of the objects."""
    return math.fsum((areas * values).tolist())


def _hausdorff_terms(
    P: _Objects,
    G: _Objects,
    best_g: np.ndarray,
    best_p: np.ndarray,
    shape: tuple[int, ...],
    empty_distance: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-object Hausdorff distances to the paired object: arrays ``(nP,)`` and ``(nG,)``."""
    if empty_distance is None:
        empty_distance = math.hypot(shape[0] - 1, shape[1] - 1)
    hd = _Hausdorff(P, G)
    h_p = np.full(P.n, float(empty_distance))
    h_g = np.full(G.n, float(empty_distance))
    if P.n and G.n:
        for i in range(1, P.n + 1):
            g = int(best_g[i])
            h_p[i - 1] = hd(i, g) if g else hd.nearest(p=i)
        for j in range(1, G.n + 1):
            p = int(best_p[j])
            h_g[j - 1] = hd(p, j) if p else hd.nearest(g=j)
    return h_p, h_g


def image_scores(
    pred: np.ndarray, gt: np.ndarray, *, empty_distance: float | None = None
) -> dict[str, float]:
    """``{"f1", "object_dice", "object_hausdorff"}`` of one image (label images ``(H, W)``)."""
    return image_stats(pred, gt, empty_distance=empty_distance).scores()


def object_f1(pred: np.ndarray, gt: np.ndarray) -> float:
    """Object F1 of one image (label images ``(H, W)``, 0 = background)."""
    return image_stats(pred, gt, hausdorff=False).f1


def object_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Object Dice of one image (label images ``(H, W)``, 0 = background)."""
    return image_stats(pred, gt, hausdorff=False).object_dice


def object_hausdorff(
    pred: np.ndarray, gt: np.ndarray, *, empty_distance: float | None = None
) -> float:
    """Object Hausdorff distance (pixels) of one image (label images ``(H, W)``)."""
    return image_stats(pred, gt, empty_distance=empty_distance).object_hausdorff
