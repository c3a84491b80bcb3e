"""Check and time glandseg's GlaS metrics against a plain per-object reference.

The reference below follows the organisers' MATLAB code object by object: one boolean
mask per object, the best match by ``np.bincount(...).argmax()`` (MATLAB ``mode``), and
the Hausdorff distance from ``scipy.spatial.distance.directed_hausdorff`` on *all*
pixels of the two objects; an object that overlaps nothing is paired with the object
of the other image at the smallest Hausdorff distance, found by trying them all. The
"other image has no objects" case uses the same convention as glandseg (image
diagonal), which the official code leaves at ``Inf``.

Predictions are perturbed truths of the 80 GlaS test images (eroded, dilated, shifted,
glands merged under one id, glands split in two, glands dropped plus false blobs,
ids permuted to large non-contiguous values; one kind per image in turn unless
``--all-kinds``), and three empty predictions. Every
per-image sum and score, and the pooled and per-image-mean scores of each part, must
agree within 1e-9. Run::

    nice -n 19 .venv/bin/python benchmarks/bench_metrics.py [--glas DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

from glandseg.data.io import read_label
from glandseg.metrics.glas import ObjectStats, image_stats
from glandseg.metrics.score import part_of

log = logging.getLogger(__name__)

TOL = 1e-9


# ------------------------------------------------------------------ reference


def ref_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.argwhere(a).astype(np.float64), np.argwhere(b).astype(np.float64)
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])


def _cached(cache: dict, own: np.ndarray, other: np.ndarray, i: int, j: int) -> float:
    key = (id(own), i, j) if id(own) < id(other) else (id(other), j, i)
    if key not in cache:
        cache[key] = ref_hausdorff(own == i, other == j)
    return cache[key]


def _side(own: np.ndarray, other: np.ndarray, empty_distance: float, cache: dict):
    """Σ|X| D and Σ|X| H over the objects X of ``own``, plus matched partners (for F1).

    ``cache`` holds the Hausdorff distance of each (own id, other id) pair already
    computed (keyed so that both sides share it).
    """
    own_ids = [int(i) for i in np.unique(own) if i != 0]
    other_ids = [int(i) for i in np.unique(other) if i != 0]
    dice_sum = haus_sum = 0.0
    area = 0
    partner: dict[int, tuple[int, int]] = {}
    for i in own_ids:
        m = own == i
        a = int(m.sum())
        area += a
        hits = other[m]
        hits = hits[hits > 0]
        if hits.size:
            j = int(np.bincount(hits).argmax())
            o = other == j
            inter = int((m & o).sum())
            dice_sum += a * 2.0 * inter / (a + int(o.sum()))
            haus_sum += a * _cached(cache, own, other, i, j)
            partner[i] = (j, inter)
        elif other_ids:
            haus_sum += a * min(_cached(cache, own, other, i, j) for j in other_ids)
        else:
            haus_sum += a * empty_distance
    return own_ids, area, dice_sum, haus_sum, partner


def ref_image_stats(pred: np.ndarray, gt: np.ndarray) -> ObjectStats:
    """Plain per-object reference for one image (same sums as glandseg's ObjectStats)."""
    diag = math.hypot(gt.shape[0] - 1, gt.shape[1] - 1)
    cache: dict = {}
    p_ids, area_p, dice_p, haus_p, partner = _side(pred, gt, diag, cache)
    g_ids, area_g, dice_g, haus_g, _ = _side(gt, pred, diag, cache)
    matched: set[int] = set()
    tp = 0
    for _i, (j, inter) in partner.items():
        if inter > 0.5 * int((gt == j).sum()) and j not in matched:
            matched.add(j)
            tp += 1
    return ObjectStats(1, len(p_ids), len(g_ids), tp, len(p_ids) - tp, len(g_ids) - tp,
                       area_p, area_g, dice_p, dice_g, haus_p, haus_g)


# ------------------------------------------------------------- perturbations


def _split(gt: np.ndarray, rng: np.random.Generator, frac: float) -> np.ndarray:
    out = gt.copy()
    nxt = int(gt.max()) + 1
    for i in [i for i in np.unique(gt) if i and rng.random() < frac]:
        rr, cc = np.nonzero(gt == i)
        cut = cc > cc.mean() if rng.random() < 0.5 else rr > rr.mean()
        out[rr[cut], cc[cut]] = nxt
        nxt += 1
    return out


def _merge(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = gt.copy()
    ids = [int(i) for i in np.unique(gt) if i]
    rng.shuffle(ids)
    for a, b in zip(ids[0::4], ids[1::4], strict=False):  # half of the objects, pairwise
        out[gt == b] = a
    grown = ndimage.grey_dilation(out, size=(5, 5))
    return np.where(out > 0, out, grown * (rng.random() < 0.5))


def _drop_and_blobs(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = gt.copy()
    for i in [i for i in np.unique(gt) if i and rng.random() < 0.3]:
        out[gt == i] = 0
    h, w = gt.shape
    yy, xx = np.mgrid[:h, :w]
    nxt = int(gt.max()) + 1
    for _ in range(int(rng.integers(1, 5))):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 30)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (out == 0)
        out[disc] = nxt
        nxt += 1
    return out


def _shift(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dy, dx = (int(v) for v in rng.integers(-12, 13, size=2))
    out = np.zeros_like(gt)
    h, w = gt.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = gt[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def perturbations(gt: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    k = int(rng.integers(2, 6)) * 2 + 1
    uniform = ndimage.minimum_filter(gt, k) == ndimage.maximum_filter(gt, k)
    eroded = np.where(uniform, gt, 0)
    dilated = np.where(gt > 0, gt, ndimage.grey_dilation(gt, size=(k, k)))
    ids = np.unique(gt)
    perm = np.zeros(int(gt.max()) + 1, dtype=np.int64)
    perm[ids[ids > 0]] = 100_000 + 7 * rng.permutation(int((ids > 0).sum()))
    return {
        "eroded": eroded,
        "dilated": dilated,
        "shifted": _shift(gt, rng),
        "merged": _merge(gt, rng),
        "split": _split(gt, rng, 0.4),
        "dropped+blobs": _drop_and_blobs(gt, rng),
        "permuted+shifted": perm[_shift(gt, rng)],
    }


# ------------------------------------------------------------------------ run


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _compare(a: ObjectStats, b: ObjectStats, what: str) -> float:
    worst = 0.0
    for name in ("n_pred", "n_gt", "tp", "fp", "fn", "area_pred", "area_gt"):
        if getattr(a, name) != getattr(b, name):
            raise AssertionError(f"{what}: {name} {getattr(a, name)} != {getattr(b, name)}")
    for name in ("dice_pred", "dice_gt", "hausdorff_pred", "hausdorff_gt"):
        x, y = getattr(a, name), getattr(b, name)
        worst = max(worst, abs(x - y) / max(1.0, abs(y)))
    for name, x in a.scores().items():
        y = b.scores()[name]
        worst = max(worst, abs(x - y))
    if worst > TOL:
        raise AssertionError(f"{what}: differs by {worst:.3g}\n  glandseg {a}\n  reference {b}")
    return worst


def main() -> int:
    default = os.environ.get("GLANDSEG_GLAS") or Path(__file__).resolve().parents[1].parent / "shared" / "glas"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glas", type=Path, default=Path(default))
    ap.add_argument(
        "--limit", type=int, default=0, help="only N test images, evenly spread (0 = all)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--all-kinds", action="store_true",
        help="score every perturbation of every image (default: one per image, in turn; "
        "the reference takes seconds per image)",
    )
    args = ap.parse_args()
    annos = sorted(args.glas.glob("test*_anno.png"))
    if not annos:
        print(f"no GlaS test annotations in {args.glas}; pass --glas or set GLANDSEG_GLAS")
        return 2
    if args.limit and args.limit < len(annos):
        annos = [annos[i * len(annos) // args.limit] for i in range(args.limit)]
    rng = np.random.default_rng(args.seed)
    cases: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    for n, path in enumerate(annos):
        stem = path.name[: -len("_anno.png")]
        gt = read_label(path)
        preds = list(perturbations(gt, rng).items())
        for kind, pred in preds if args.all_kinds else [preds[n % len(preds)]]:
            cases.append((stem, kind, pred, gt))
    for path in annos[:3]:  # empty predictions
        gt = read_label(path)
        cases.append((path.name[: -len("_anno.png")], "empty", np.zeros_like(gt), gt))

    t0 = time.perf_counter()
    ours = [image_stats(p, g) for _, _, p, g in cases]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    refs = []
    for n, (stem, kind, p, g) in enumerate(cases):
        refs.append(ref_image_stats(p, g))
        if n % 10 == 9:
            print(f"  reference: {n + 1}/{len(cases)} ({stem} {kind}) "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    t_ref = time.perf_counter() - t0

    worst = 0.0
    for (stem, kind, _, _), a, b in zip(cases, ours, refs, strict=True):
        worst = max(worst, _compare(a, b, f"{stem} {kind}"))
    # pooled and per-image means per part and perturbation
    groups: dict[tuple[str, str], list[int]] = {}
    for n, (stem, kind, _, _) in enumerate(cases):
        groups.setdefault((part_of(stem), kind), []).append(n)
    lines = []
    for (part, kind), idx in sorted(groups.items()):
        pa = ObjectStats.pool(ours[i] for i in idx)
        pb = ObjectStats.pool(refs[i] for i in idx)
        worst = max(worst, _compare(pa, pb, f"{part} {kind} pooled"))
        for key in ("f1", "object_dice", "object_hausdorff"):
            ma = math.fsum(ours[i].scores()[key] for i in idx) / len(idx)
            mb = math.fsum(refs[i].scores()[key] for i in idx) / len(idx)
            worst = max(worst, abs(ma - mb))
        s = pa.scores()
        lines.append(
            f"| {part} | {kind} | {len(idx)} | {s['f1']:.4f} | {s['object_dice']:.4f} "
            f"| {s['object_hausdorff']:.2f} |"
        )
    n_obj = sum(a.n_pred + a.n_gt for a in ours)
    print(f"machine: {_cpu()}, {os.cpu_count()} logical cores, Python {platform.python_version()}")
    print(f"{len(cases)} image pairs ({len(annos)} GlaS test images), {n_obj} objects")
    print(f"largest difference from the reference: {worst:.3g} (tolerance {TOL:g})")
    print(f"glandseg:  {t_ours:8.2f} s  ({1000 * t_ours / len(cases):.1f} ms per image)")
    print(f"reference: {t_ref:8.2f} s  ({1000 * t_ref / len(cases):.1f} ms per image)")
    print(f"speed-up:  {t_ref / t_ours:8.1f}x")
    print("\n| part | prediction | images | pooled F1 | pooled object Dice | pooled object Hausdorff |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
