"""Baseline for ``bench_metrics.py``: the GlaS object metrics written plainly, object by object.

What a competent person writes without vectorising (no contingency table, no KD-trees,
no candidate pruning), following the organisers' MATLAB code (``F1score.m``,
``ObjectDice.m``, ``ObjectHausdorff.m``) and the definitions in
:mod:`glandseg.metrics.glas`:

- objects and their bounding boxes from ``skimage.measure.regionprops``;
- for each object, the best-overlapping partner inside its bounding box
  (``np.bincount(...).argmax()``: MATLAB ``mode``, ties to the smallest id), Dice from the
  intersection count;
- the Hausdorff distance of a pair with ``scipy.ndimage.distance_transform_edt`` on the
  crop of the union of the two bounding boxes (exact: the nearest pixel of an object
  lies in its own box): ``max(edt(~B)[A].max(), edt(~A)[B].max())``;
- an object that overlaps nothing is compared with *every* object of the other image
  and takes the smallest Hausdorff distance (the official rule, as the MATLAB code does
  it); distances of a pair are cached so both sides share them;
- where the other image has no objects, the image diagonal ``hypot(H-1, W-1)``
  (glandseg's convention; the official code gives ``Inf``).

It imports nothing from glandseg except the label-file reader, so that it starts as a
plain script would. Run as a whole process, like ``glandseg score``::

    .venv/bin/python benchmarks/metrics_baseline.py PRED_DIR GT_DIR --json OUT.json

``OUT.json`` holds per-image sums (``{"stem": {"n_pred", ..., "hausdorff_gt"}}``) in the
field order of :class:`glandseg.metrics.glas.ObjectStats`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops

FIELDS = ("n_images", "n_pred", "n_gt", "tp", "fp", "fn", "area_pred", "area_gt",
          "dice_pred", "dice_gt", "hausdorff_pred", "hausdorff_gt")


def pair_hausdorff(a_lab: np.ndarray, a: int, a_box: tuple, b_lab: np.ndarray, b: int,
                   b_box: tuple) -> float:
    """Hausdorff distance of object ``a`` of ``a_lab`` and ``b`` of ``b_lab`` (pixels)."""
    r0, c0 = min(a_box[0], b_box[0]), min(a_box[1], b_box[1])
    r1, c1 = max(a_box[2], b_box[2]), max(a_box[3], b_box[3])
    ma = a_lab[r0:r1, c0:c1] == a
    mb = b_lab[r0:r1, c0:c1] == b
    d_to_b = ndimage.distance_transform_edt(~mb)
    d_to_a = ndimage.distance_transform_edt(~ma)
    return float(max(d_to_b[ma].max(), d_to_a[mb].max()))


def side(own: np.ndarray, other: np.ndarray, cache: dict, own_is_pred: bool) -> dict:
    """Σ|X|, Σ|X| D, Σ|X| H over the objects X of ``own`` and each object's best partner."""
    own_props = regionprops(own)
    other_props = {r.label: r for r in regionprops(other)}
    diag = math.hypot(own.shape[0] - 1, own.shape[1] - 1)
    area = 0
    dice, haus = [], []  # |X| D and |X| H per object, summed with math.fsum
    partner = {}
    for r in own_props:
        i, a = r.label, int(r.area)
        area += a
        r0, c0, r1, c1 = r.bbox
        hits = other[r0:r1, c0:c1][r.image]
        hits = hits[hits > 0]
        if hits.size:
            j = int(np.bincount(hits).argmax())
            inter = int((hits == j).sum())
            g = other_props[j]
            dice.append(a * (2.0 * inter / (a + int(g.area))))
            candidates = [j]
            partner[i] = (j, inter)
        elif other_props:
            candidates = list(other_props)
        else:
            haus.append(a * diag)
            continue
        best = math.inf
        for j in candidates:
            key = (i, j) if own_is_pred else (j, i)
            h = cache.get(key)
            if h is None:
                h = pair_hausdorff(own, i, r.bbox, other, j, other_props[j].bbox)
                cache[key] = h
            best = min(best, h)
        haus.append(a * best)
    return {"n": len(own_props), "area": area, "dice": math.fsum(dice),
            "haus": math.fsum(haus), "partner": partner}


def image_sums(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Per-image sums (the fields of glandseg's ``ObjectStats``) for label images ``(H, W)``."""
    cache: dict = {}
    p = side(pred, gt, cache, True)
    g = side(gt, pred, cache, False)
    gt_area = {r.label: int(r.area) for r in regionprops(gt)}
    matched = set()
    for j, inter in p["partner"].values():
        if 2 * inter > gt_area[j]:
            matched.add(j)
    tp = len(matched)
    return dict(zip(FIELDS, (1, p["n"], g["n"], tp, p["n"] - tp, g["n"] - tp, p["area"],
                             g["area"], p["dice"], g["dice"], p["haus"], g["haus"]), strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pred_dir", type=Path)
    ap.add_argument("gt_dir", type=Path)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    from glandseg.data.io import read_label  # the same 8/16/32-bit reader as glandseg score

    out = {}
    for anno in sorted(args.gt_dir.glob("*_anno.png")):
        stem = anno.name[: -len("_anno.png")]
        preds = [args.pred_dir / f"{stem}{e}" for e in (".png", ".tif")]
        pred_path = next(p for p in preds if p.is_file())
        out[stem] = image_sums(read_label(pred_path), read_label(anno))
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
