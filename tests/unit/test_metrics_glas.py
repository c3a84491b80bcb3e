"""Object-level GlaS metrics on hand-made label images whose values are derived on paper.

Coordinates are (row, col); a rectangle ``rows a-b, cols c-d`` includes both ends.
Hausdorff distances are Euclidean in pixels over all pixels of the two objects.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff

from glandseg.metrics.glas import (
    ObjectStats,
    hausdorff_distance,
    image_scores,
    image_stats,
    object_dice,
    object_f1,
    object_hausdorff,
)
from glandseg.metrics.score import per_image_table, score_pairs


def rect(img: np.ndarray, r0: int, r1: int, c0: int, c1: int, v: int) -> np.ndarray:
    img[r0 : r1 + 1, c0 : c1 + 1] = v
    return img


def blank(h: int = 12, w: int = 16) -> np.ndarray:
    return np.zeros((h, w), dtype=np.int32)


def approx(d: dict, **want: float) -> None:
    for k, v in want.items():
        assert d[k] == pytest.approx(v, abs=1e-12), (k, d[k], v)


# ------------------------------------------------------------------ hand cases


def test_split_gland():
    # G1 rows 2-5, cols 1-10: 4x10 = 40 px. P1 cols 1-6 (24 px), P2 cols 7-10 (16 px).
    # F1: P1 covers 24/40 = 60% > 50% -> TP; P2 40% -> FP; G1 matched -> FN 0.
    #     F1 = 2*1 / (2 + 1 + 0) = 2/3.
    # Dice: D(P1,G1) = 48/64 = 3/4, D(P2,G1) = 32/56 = 4/7.
    #     pred term (24*3/4 + 16*4/7)/40 = 19/28; GT term: G1 -> P1 (24 > 16): 3/4 = 21/28.
    #     object Dice = (19/28 + 21/28)/2 = 5/7.
    # Hausdorff: H(P1,G1) = 10-6 = 4 (G1's column 10 to P1's column 6);
    #     H(P2,G1) = 7-1 = 6. pred term (24*4 + 16*6)/40 = 4.8; GT term H(G1,P1) = 4.
    #     object Hausdorff = (4.8 + 4)/2 = 4.4.
    gt = rect(blank(), 2, 5, 1, 10, 1)
    pred = rect(rect(blank(), 2, 5, 1, 6, 1), 2, 5, 7, 10, 2)
    s = image_stats(pred, gt)
    assert (s.tp, s.fp, s.fn, s.n_pred, s.n_gt) == (1, 1, 0, 2, 1)
    approx(s.scores(), f1=2 / 3, object_dice=5 / 7, object_hausdorff=4.4)


def test_two_merged_glands():
    # G1 rows 2-5 cols 1-4 (16 px), G2 rows 2-5 cols 7-12 (24 px);
    # P1 rows 2-5 cols 1-12 (48 px) covers both and the gap.
    # F1: P1's best GT is G2 (24 > 16), 24/24 > 50% -> TP; FP 0; G1 -> FN 1. F1 = 2/3.
    # Dice: D(P1,G2) = 48/72 = 2/3 (pred term); D(G1,P1) = 32/64 = 1/2;
    #     GT term (16/2 + 24*2/3)/40 = 0.6. object Dice = (2/3 + 0.6)/2 = 19/30.
    # Hausdorff: H(P1,G2) = 7-1 = 6; H(G1,P1) = 12-4 = 8.
    #     pred term 6; GT term (16*8 + 24*6)/40 = 6.8. object Hausdorff = 6.4.
    gt = rect(rect(blank(), 2, 5, 1, 4, 1), 2, 5, 7, 12, 2)
    pred = rect(blank(), 2, 5, 1, 12, 1)
    s = image_stats(pred, gt)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    approx(s.scores(), f1=2 / 3, object_dice=19 / 30, object_hausdorff=6.4)


def test_missed_gland():
    # G1 rows 1-4 cols 1-4, G2 rows 1-4 cols 11-14 (16 px each); P1 = G1 exactly.
    # F1: TP 1, FP 0, FN 1 -> 2/3. Dice: pred term 1; GT term (16*1 + 16*0)/32 = 1/2 -> 3/4.
    # Hausdorff: H(P1,G1) = 0; G2 overlaps nothing -> nearest prediction P1,
    #     H(G2,P1) = 14-4 = 10 (same rows). GT term (0 + 16*10)/32 = 5 -> object H = 2.5.
    gt = rect(rect(blank(), 1, 4, 1, 4, 1), 1, 4, 11, 14, 2)
    pred = rect(blank(), 1, 4, 1, 4, 1)
    s = image_stats(pred, gt)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    approx(s.scores(), f1=2 / 3, object_dice=0.75, object_hausdorff=2.5)


def test_false_blob():
    # G1 = P1 rows 1-4 cols 1-4 (16 px); false blob P2 rows 1-2 cols 11-12 (4 px).
    # F1: TP 1, FP 1, FN 0 -> 2/3. Dice: pred term (16*1 + 4*0)/20 = 0.8; GT term 1 -> 0.9.
    # Hausdorff: P2 overlaps nothing -> nearest GT G1. P2 -> G1: 12-4 = 8;
    #     G1 -> P2: pixel (4,1) to (2,11) = sqrt(2^2 + 10^2) = sqrt(104), the largest.
    #     pred term 4*sqrt(104)/20; GT term 0 -> object H = sqrt(104)/10.
    gt = rect(blank(), 1, 4, 1, 4, 1)
    pred = rect(rect(blank(), 1, 4, 1, 4, 1), 1, 2, 11, 12, 2)
    s = image_stats(pred, gt)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    approx(s.scores(), f1=2 / 3, object_dice=0.9, object_hausdorff=math.sqrt(104) / 10)


def test_shifted_gland_exactly_half_is_not_a_match():
    # G1 rows 2-5 cols 2-7 (24 px); P1 = G1 shifted by (1, 2): rows 3-6 cols 4-9.
    # Intersection rows 3-5 x cols 4-7 = 12 = exactly 50% of G1 -> not > 50%: FP 1, FN 1, F1 0.
    # Dice 2*12/48 = 1/2 on both sides -> 1/2.
    # Hausdorff of a translate by (1, 2): corner (6,9) to (5,7) = sqrt(5) -> sqrt(5).
    gt = rect(blank(), 2, 5, 2, 7, 1)
    pred = rect(blank(), 3, 6, 4, 9, 1)
    s = image_stats(pred, gt)
    assert (s.tp, s.fp, s.fn) == (0, 1, 1)
    approx(s.scores(), f1=0.0, object_dice=0.5, object_hausdorff=math.sqrt(5))


def test_shifted_gland_one_column_is_a_match():
    # G1 rows 2-5 cols 2-7 (24 px); P1 shifted one column: cols 3-8 -> 20/24 > 50%: TP.
    # Dice 40/48 = 5/6; Hausdorff 1.
    gt = rect(blank(), 2, 5, 2, 7, 1)
    pred = rect(blank(), 2, 5, 3, 8, 1)
    approx(image_scores(pred, gt), f1=1.0, object_dice=5 / 6, object_hausdorff=1.0)


def test_identity_is_perfect_and_wrappers_agree():
    gt = rect(rect(blank(), 1, 4, 1, 4, 3), 6, 10, 6, 14, 9)
    approx(image_scores(gt, gt), f1=1.0, object_dice=1.0, object_hausdorff=0.0)
    pred = rect(blank(), 2, 5, 1, 12, 1)
    s = image_stats(pred, gt)
    assert object_f1(pred, gt) == s.f1
    assert object_dice(pred, gt) == s.object_dice
    assert object_hausdorff(pred, gt) == s.object_hausdorff


# ------------------------------------------------------- ids, empties, pooling


def _combined() -> tuple[np.ndarray, np.ndarray]:
    """Several situations in one 40x40 image, without overlap ties."""
    gt, pred = blank(40, 40), blank(40, 40)
    rect(gt, 2, 5, 1, 10, 1)
    rect(pred, 2, 5, 1, 6, 1)
    rect(pred, 2, 5, 7, 10, 2)  # split
    rect(gt, 10, 13, 1, 4, 2)
    rect(gt, 10, 13, 7, 12, 3)
    rect(pred, 10, 13, 1, 12, 3)  # merged
    rect(gt, 20, 23, 20, 23, 4)  # missed
    rect(pred, 30, 31, 30, 33, 4)  # false blob
    rect(gt, 30, 35, 2, 9, 5)
    rect(pred, 31, 36, 3, 10, 5)  # shifted
    return pred, gt


def test_label_permutation_and_noncontiguous_ids_do_not_matter():
    pred, gt = _combined()
    base = image_stats(pred, gt)
    rng = np.random.default_rng(1)
    for _ in range(3):
        pm = np.concatenate(([0], rng.permutation(np.arange(1, 6)) * 7919 + 70000))
        gm = np.concatenate(([0], rng.permutation(np.arange(1, 6)) + 250))
        s = image_stats(pm[pred], gm[gt].astype(np.uint16))
        assert s == base
    # huge ids take the sorting path; still the same objects
    big = np.where(pred > 0, pred.astype(np.int64) * 10**12, 0)
    assert image_stats(big, gt) == base


def test_no_predictions():
    # GT 2 objects, nothing predicted: F1 0 (FN 2), Dice 0, Hausdorff = the other term
    # (every GT object at the empty distance = image diagonal hypot(39, 39)).
    _, gt = _combined()
    gt = np.where(gt <= 2, gt, 0)
    s = image_stats(np.zeros_like(gt), gt)
    assert (s.tp, s.fp, s.fn, s.n_pred) == (0, 0, 2, 0)
    approx(s.scores(), f1=0.0, object_dice=0.0, object_hausdorff=math.hypot(39, 39))
    assert image_stats(np.zeros_like(gt), gt, empty_distance=math.inf).object_hausdorff == math.inf
    assert image_stats(np.zeros_like(gt), gt, empty_distance=7.0).object_hausdorff == 7.0
    # the reverse: predictions but no truth
    s = image_stats(gt, np.zeros_like(gt))
    assert (s.tp, s.fp, s.fn) == (0, 2, 0)
    approx(s.scores(), f1=0.0, object_dice=0.0, object_hausdorff=math.hypot(39, 39))
    # both empty: perfect
    z = np.zeros((5, 7), np.uint8)
    approx(image_scores(z, z), f1=1.0, object_dice=1.0, object_hausdorff=0.0)


def test_pooled_differs_from_per_image_mean():
    # image 1: perfect, one 10x10 gland (100 px). image 2: the missed-gland case
    # (P1 = G1 16 px, G2 16 px missed, H(G2, P1) = 10).
    # pooled F1: TP 2, FP 0, FN 1 -> 4/5;       per-image mean (1 + 2/3)/2 = 5/6.
    # pooled Dice: pred (100 + 16)/116 = 1, GT (100 + 16)/132 = 29/33 -> 31/33;
    #     per-image mean (1 + 3/4)/2 = 7/8.
    # pooled Hausdorff: pred 0, GT 16*10/132 = 40/33 -> 20/33; per-image (0 + 2.5)/2 = 5/4.
    g1 = rect(blank(), 1, 10, 1, 10, 1)
    g2 = rect(rect(blank(), 1, 4, 1, 4, 1), 1, 4, 11, 14, 2)
    p2 = rect(blank(), 1, 4, 1, 4, 1)
    out = score_pairs([("testA_1", g1, g1), ("testA_2", p2, g2)])
    assert set(out) == {"testA"}
    a = out["testA"]
    assert a["n_images"] == 2
    approx(a["pooled"], f1=0.8, object_dice=31 / 33, object_hausdorff=20 / 33, tp=2, fp=0, fn=1)
    approx(a["per_image"], f1=5 / 6, object_dice=7 / 8, object_hausdorff=5 / 4)
    assert set(a["pooled"]) == {"f1", "object_dice", "object_hausdorff", "tp", "fp", "fn"}
    assert set(a["per_image"]) == {"f1", "object_dice", "object_hausdorff"}
    pooled = ObjectStats.pool([image_stats(g1, g1), image_stats(p2, g2)])
    assert pooled.f1 == pytest.approx(0.8)


def test_parts_and_table():
    g = rect(blank(), 1, 4, 1, 4, 1)
    items = [("testB_2", g, g), ("train_1", g, g), ("testA_1", g, g), ("x", g, g, None)]
    out = score_pairs(items)
    assert list(out) == ["testA", "testB", "other"]
    assert out["other"]["n_images"] == 2
    rows = per_image_table(items)
    assert [r["stem"] for r in rows] == ["testB_2", "train_1", "testA_1", "x"]
    assert rows[0]["f1"] == 1.0 and rows[0]["bce"] == ""
    # probabilities add bce and count_score to per_image
    prob = (g > 0).astype(float)
    out = score_pairs([("testA_1", g, g, prob)])
    assert out["testA"]["per_image"]["count_score"] == 1.0
    assert out["testA"]["per_image"]["bce"] < 1e-6


def test_shape_mismatch_names_the_stems():
    from glandseg import GlandsegError

    g = blank()
    with pytest.raises(GlandsegError, match="testA_7.*testA_9"):
        score_pairs([("testA_7", blank(3, 3), g), ("testA_8", g, g), ("testA_9", g, blank(5, 5))])
    with pytest.raises(ValueError):
        image_stats(blank(3, 3), blank(4, 4))
    with pytest.raises(ValueError):
        image_stats(np.zeros((3, 3)), blank(3, 3))  # float is not a label image


# ------------------------------------------------------------- Hausdorff exact


def _brute(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.argwhere(a).astype(float), np.argwhere(b).astype(float)
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])


def test_hausdorff_of_surrounded_object_uses_interior_pixels():
    # B is a thick ring open on one side around the disc-like square A: the pixel of A
    # farthest from B is A's centre, not a boundary pixel.
    a = np.zeros((31, 31), bool)
    a[5:26, 5:26] = True
    b = np.zeros_like(a)
    b[3:28, 3:28] = True
    b[5:26, 5:26] = False
    b[12:19, 25:28] = False  # opening
    assert hausdorff_distance(a, b) == _brute(a, b)
    # centre (15,15) is 11 from the ring (row 4, row 26, col 4); A's own boundary pixels
    # are at most |(15,25) - (11,26)| = sqrt(17) from B
    assert hausdorff_distance(a, b) == pytest.approx(11.0)


def test_hausdorff_matches_brute_force_on_random_shapes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.random((24, 30)) < rng.uniform(0.02, 0.4)
        b = rng.random((24, 30)) < rng.uniform(0.02, 0.4)
        if a.any() and b.any():
            assert hausdorff_distance(a, b) == _brute(a, b)
    assert hausdorff_distance(np.zeros((3, 3)), np.zeros((3, 3))) == 0.0
    assert hausdorff_distance(np.eye(3), np.zeros((3, 3))) == math.inf


def test_nearest_object_tie_takes_smallest_id():
    # blob P at cols 7-8 sits exactly between G3 (cols 1-2) and G8 (cols 13-14): H = 6 both
    # ways -> paired with G3 (smallest id); the value is the same either way.
    gt = rect(rect(blank(4, 16), 1, 2, 1, 2, 8), 1, 2, 13, 14, 3)
    pred = rect(blank(4, 16), 1, 2, 7, 8, 5)
    s = image_stats(pred, gt)
    assert s.hausdorff_pred == pytest.approx(4 * 6.0)


def test_split_gt_components_only_changes_ground_truth() -> None:
    from glandseg.metrics.score import score_pairs, split_gt_components

    gt = np.zeros((40, 60), dtype=np.int32)
    gt[5:15, 5:15] = 1     # one id used for two separate glands
    gt[25:35, 40:50] = 1
    gt[5:15, 15:25] = 2    # touches gland 1's first region: must stay a separate object
    gt[38, 58] = 1         # a stray pixel: dropped (< 10 px)
    split = split_gt_components(gt)
    assert len(np.unique(split[split > 0])) == 3
    assert split[38, 58] == 0
    assert split[10, 10] != split[30, 45] and split[10, 10] != split[10, 20]
    # A per-gland prediction: 3 objects. Against the file as given only 2 of them can match.
    pred = np.zeros_like(gt)
    pred[5:15, 5:15], pred[5:15, 15:25], pred[25:35, 40:50] = 1, 2, 3
    given = score_pairs([("testB_1", pred, gt)])["testB"]["pooled"]
    fixed = score_pairs([("testB_1", pred, gt)], split_gt=True)["testB"]["pooled"]
    assert (given["tp"], given["fp"]) == (1, 2)  # 100 of 201 px of id 1 is not > 50 %
    assert (fixed["tp"], fixed["fp"], fixed["fn"]) == (3, 0, 0)
    # The prediction itself is never split: one id on two regions stays one object.
    merged = np.where(pred == 3, 1, pred)
    m = score_pairs([("testB_1", merged, gt)], split_gt=True)["testB"]["pooled"]
    assert m["tp"] + m["fp"] == 2


# ---------------------------------------- pruned Hausdorff search: exact, not approximate


def _blobs(rng: np.random.Generator, h: int, w: int, n: int, r_max: int) -> np.ndarray:
    """A label image ``(H, W)`` of up to ``n`` random discs (later ones on top), ids 1..n."""
    out = np.zeros((h, w), dtype=np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, n + 1):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, r_max)
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return out


def _brute_stats(pred: np.ndarray, gt: np.ndarray) -> ObjectStats:
    """The module's definitions object by object on full masks, nearest object by trying all."""
    diag = math.hypot(gt.shape[0] - 1, gt.shape[1] - 1)

    def side(own, other):
        area, dice, haus, partner = 0, 0.0, 0.0, {}
        others = [j for j in np.unique(other) if j]
        for i in [i for i in np.unique(own) if i]:
            m = own == i
            a = int(m.sum())
            area += a
            hits = other[m][other[m] > 0]
            if hits.size:
                j = int(np.bincount(hits).argmax())
                inter = int((hits == j).sum())
                dice += a * 2 * inter / (a + int((other == j).sum()))
                haus += a * _brute(m, other == j)
                partner[i] = (j, inter)
            else:
                haus += a * (min(_brute(m, other == j) for j in others) if others else diag)
        return area, dice, haus, partner

    ap, dp, hp, partner = side(pred, gt)
    ag, dg, hg, _ = side(gt, pred)
    tp = len({j for j, inter in partner.values() if 2 * inter > int((gt == j).sum())})
    n_p, n_g = len(np.unique(pred[pred > 0])), len(np.unique(gt[gt > 0]))
    return ObjectStats(1, n_p, n_g, tp, n_p - tp, n_g - tp, ap, ag, dp, dg, hp, hg)


def _assert_same(a: ObjectStats, b: ObjectStats) -> None:
    for name in ("n_pred", "n_gt", "tp", "fp", "fn", "area_pred", "area_gt"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("dice_pred", "dice_gt", "hausdorff_pred", "hausdorff_gt"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12, abs=1e-12), name


def test_image_stats_match_brute_force_with_aggressive_pruning(monkeypatch):
    # Tiny tiles and no size threshold: every pruning step runs on every distance, and
    # unmatched discs trigger the capped nearest-object search. Figures must not move.
    import glandseg.metrics.glas as glas

    monkeypatch.setattr(glas, "_PRUNE_MIN", 0)
    monkeypatch.setattr(glas, "_MASK_TILE", 4)
    monkeypatch.setattr(glas, "_POINT_TILES", (3, 2))
    rng = np.random.default_rng(5)
    for _ in range(12):
        gt = _blobs(rng, 40, 56, int(rng.integers(1, 7)), 12)
        pred = _blobs(rng, 40, 56, int(rng.integers(1, 7)), 12)
        _assert_same(image_stats(pred, gt), _brute_stats(pred, gt))


def test_large_objects_take_the_pruned_path_and_stay_exact():
    # Objects of several thousand pixels, far apart, surrounding and merged, with the
    # default tiling: the result is the distance of one pixel, equal to the brute force.
    h, w = 180, 240
    yy, xx = np.mgrid[:h, :w]
    a = (yy - 90) ** 2 + (xx - 70) ** 2 <= 50**2  # 7.8k px
    ring = ((yy - 90) ** 2 + (xx - 70) ** 2 <= 75**2) & ~((yy - 90) ** 2 + (xx - 70) ** 2 <= 60**2)
    far = (np.abs(yy - 40) <= 30) & (np.abs(xx - 205) <= 25)
    for b in (ring, far, ring | far, a[:, ::-1]):
        assert hausdorff_distance(a, b) == _brute(a, b)
    gt = np.where(a, 1, 0) + np.where(far, 2, 0)
    pred = np.where(a | far, 5, 0)  # one prediction over both glands
    pred[ring] = 9  # a false ring around them
    _assert_same(image_stats(pred, gt), _brute_stats(pred, gt))


def test_capped_distance_is_a_lower_bound_and_not_cached():
    import glandseg.metrics.glas as glas

    h, w = 60, 200
    p, g = np.zeros((h, w), np.int32), np.zeros((h, w), np.int32)
    p[10:50, 5:60] = 1
    g[10:50, 120:190] = 1
    hd = glas._Hausdorff(glas._objects(p), glas._objects(g))
    exact = _brute(p == 1, g == 1)
    capped = hd(1, 1, cap=10.0)
    assert 10.0 <= capped <= exact and (1, 1) not in hd.cache
    assert hd(1, 1) == exact and hd.cache[(1, 1)] == exact
    assert hd(1, 1, cap=10.0) == exact  # cached exact values are returned as they are


def test_boxes_and_boundaries_of_all_objects_at_once():
    from scipy import ndimage

    import glandseg.metrics.glas as glas

    rng = np.random.default_rng(2)
    for dtype, scale in ((np.uint8, 1), (np.uint16, 1000), (np.int64, 10**9)):
        lab = _blobs(rng, 37, 45, 9, 10)
        lab[0, :5] = 9  # an object on the image border
        lab = np.unique(lab, return_inverse=True)[1].reshape(lab.shape)  # ids 1..n
        lab = (lab.astype(np.int64) * scale).astype(dtype)  # uint8: ids 1..n used as they are
        obj = glas._objects(lab)
        assert (obj.compact is lab) == (dtype == np.uint8)
        sl = ndimage.find_objects(obj.compact)
        want = [(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in sl]
        assert [tuple(b) for b in obj.boxes.tolist()] == want
        for k in range(1, obj.n + 1):
            m = np.pad(obj.compact == k, 1)
            inner = m[1:-1, 1:-1]
            interior = inner & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            edge = sorted(map(tuple, np.argwhere(inner & ~interior).tolist()))
            assert sorted(map(tuple, obj.tree(k).data.astype(int).tolist())) == edge


def test_pooled_sums_do_not_depend_on_the_order_of_images():
    # 1e16 + 1 + 1 is 1e16 in plain float addition but 1e16 + 2 in the other order.
    stats = [ObjectStats(n_images=1, n_pred=1, area_pred=1, hausdorff_pred=v, dice_pred=v)
             for v in (1e16, 1.0, 1.0)]
    forward, backward = ObjectStats.pool(stats), ObjectStats.pool(stats[::-1])
    assert forward == backward
    assert forward.hausdorff_pred == 1e16 + 2 and forward.n_images == 3
