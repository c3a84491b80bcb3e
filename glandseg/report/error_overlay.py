"""Error overlays: where and how a segmentation differs from the ground truth.

Inputs: ``pred`` and ``truth``, instance label images ``(H, W)`` of one shape (integers,
0 = background, ids as given, never relabelled), and the RGB image ``uint8 (H, W, 3)``.

Each object is classified (:func:`classify_objects`), with the GlaS F1 rule
(a prediction is correct when it covers more than half of the ground-truth gland it
overlaps most):

- prediction ``merged``: covers more than half of two or more ground-truth glands;
- prediction ``split``: one of two or more predictions that each lie mostly (> 50 % of
  their area) inside one ground-truth gland;
- prediction ``correct`` (a true positive), else ``false`` (a false positive);
- ground truth ``merged`` / ``split``: the gland of such a prediction; ``detected``: a
  prediction covers more than half of it; else ``missed`` (a false negative).

Every object also gets its Dice with its most-overlapping partner (0 without one).
:func:`draw_error_overlay` draws ground-truth outlines (yellow, just outside each gland)
and predicted outlines (cyan, just inside), fills missed, false, merged and split objects
in four colours, writes each prediction's Dice (and each missed gland's) at its centre,
and adds a legend strip below the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries

from glandseg.data.io import check_labels, write_image

#: Colours (RGB) of the overlay, by what they mark.
COLORS: dict[str, tuple[int, int, int]] = {
    "truth": (255, 221, 0),
    "pred": (0, 215, 255),
    "missed": (235, 35, 35),
    "false": (225, 0, 225),
    "merged": (255, 140, 0),
    "split": (50, 90, 255),
}
#: Legend entries, in order: (colour key, text).
LEGEND: tuple[tuple[str, str], ...] = (
    ("truth", "ground truth"),
    ("pred", "prediction"),
    ("missed", "missed gland"),
    ("false", "false gland"),
    ("merged", "merged"),
    ("split", "split"),
)
FILL_ALPHA = 0.4
PRED_KINDS = ("correct", "false", "merged", "split")
TRUTH_KINDS = ("detected", "missed", "merged", "split")


@dataclass(frozen=True)
class ObjectInfo:
    """One object of an error overlay: ``side`` (``"pred"`` or ``"truth"``), its label
    ``id``, ``kind`` (see the module doc), ``dice`` with its best partner (``partner``, 0 =
    none), ``area`` (px) and centroid ``x``, ``y`` (pixel indices)."""

    side: str
    id: int
    kind: str
    dice: float
    partner: int
    area: int
    x: float
    y: float

    def to_dict(self) -> dict:
        return asdict(self)


_DENSE_MAX = 1 << 22  # largest id (or id-pair table) counted with a dense bincount


def _counts(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """``(ids, counts[, weighted sums])`` of the non-negative integers ``values`` (1-D)."""
    if values.size and int(values.max()) < _DENSE_MAX:
        cnt = np.bincount(values)
        ids = np.flatnonzero(cnt)
        if weights is None:
            return ids, cnt[ids]
        return ids, cnt[ids], np.bincount(values, weights=weights)[ids]
    ids, inv, cnt = np.unique(values, return_inverse=True, return_counts=True)
    if weights is None:
        return ids, cnt
    return ids, cnt, np.bincount(inv.reshape(-1), weights=weights)


def _tables(pred: np.ndarray, truth: np.ndarray):
    """Areas and intersections: ``(pred areas, truth areas, pairs)``, the areas as
    ``{id: px}`` and ``pairs`` mapping ``(p, g)`` to the intersection (px)."""
    p1, g1 = pred.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    pid, parea = _counts(p1[p1 > 0])
    gid, garea = _counts(g1[g1 > 0])
    both = (p1 > 0) & (g1 > 0)
    k = int(gid.max()) + 1 if gid.size else 1
    codes, cnt = _counts(p1[both] * k + g1[both])
    pairs = {(int(c // k), int(c % k)): int(n) for c, n in zip(codes, cnt, strict=True)}
    return ({int(i): int(a) for i, a in zip(pid, parea, strict=True)},
            {int(i): int(a) for i, a in zip(gid, garea, strict=True)}, pairs)


def _centroids(labels: np.ndarray) -> dict[int, tuple[float, float]]:
    """``{id: (x, y)}`` centroids (pixel indices) of the objects of ``labels``."""
    ys, xs = np.nonzero(labels)
    if not ys.size:
        return {}
    ids = labels[ys, xs].astype(np.int64)
    uniq, cnt, sx = _counts(ids, xs.astype(np.float64))
    _, _, sy = _counts(ids, ys.astype(np.float64))
    return {int(i): (float(sx[k] / cnt[k]), float(sy[k] / cnt[k])) for k, i in enumerate(uniq)}


def classify_objects(pred: np.ndarray, truth: np.ndarray) -> list[ObjectInfo]:
    """Classify every predicted and ground-truth object (see the module doc).

    ``pred``, ``truth``: ``(H, W)`` integer label images, 0 = background. Returns the
    predicted objects (by id), then the ground-truth objects (by id).
    """
    pred, truth = check_labels(pred), check_labels(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    parea, garea, pairs = _tables(pred, truth)
    by_p: dict[int, list[tuple[int, int]]] = {p: [] for p in parea}
    by_g: dict[int, list[tuple[int, int]]] = {g: [] for g in garea}
    for (p, g), n in pairs.items():
        by_p[p].append((g, n))
        by_g[g].append((p, n))

    def best(lst: list[tuple[int, int]]) -> tuple[int, int]:
        return min(lst, key=lambda t: (-t[1], t[0])) if lst else (0, 0)

    covered = {p: [g for g, n in lst if n > 0.5 * garea[g]] for p, lst in by_p.items()}
    merged_p = {p for p, gs in covered.items() if len(gs) >= 2}
    inside = {g: [p for p, n in lst if n > 0.5 * parea[p]] for g, lst in by_g.items()}
    split_g = {g for g, ps in inside.items() if len(ps) >= 2}
    split_p = {p for g in split_g for p in inside[g]} - merged_p
    pc, gc = _centroids(pred), _centroids(truth)
    out = []
    for p, a in sorted(parea.items()):
        g, n = best(by_p[p])
        if p in merged_p:
            kind = "merged"
        elif p in split_p:
            kind = "split"
        elif g and n > 0.5 * garea[g]:
            kind = "correct"
        else:
            kind = "false"
        dice = 2.0 * n / (a + garea[g]) if g else 0.0
        out.append(ObjectInfo("pred", p, kind, dice, g, a, *pc[p]))
    merged_g = {g for p in merged_p for g in covered[p]}
    for g, a in sorted(garea.items()):
        p, n = best(by_g[g])
        if g in merged_g:
            kind = "merged"
        elif g in split_g:
            kind = "split"
        elif any(n2 > 0.5 * a for _, n2 in by_g[g]):
            kind = "detected"
        else:
            kind = "missed"
        dice = 2.0 * n / (a + parea[p]) if p else 0.0
        out.append(ObjectInfo("truth", g, kind, dice, p, a, *gc[g]))
    return out


def error_counts(objects: list[ObjectInfo]) -> dict[str, int]:
    """``{"missed", "false", "merged", "split"}`` counts: missed ground-truth glands, false
    predictions, merging predictions and split pieces."""
    return {
        "missed": sum(o.side == "truth" and o.kind == "missed" for o in objects),
        "false": sum(o.side == "pred" and o.kind == "false" for o in objects),
        "merged": sum(o.side == "pred" and o.kind == "merged" for o in objects),
        "split": sum(o.side == "pred" and o.kind == "split" for o in objects),
    }


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _legend(width: int, scale: float) -> Image.Image:
    """A legend strip ``width`` px wide (entries wrap onto more rows)."""
    size = max(11, round(13 * scale))
    font = _font(size)
    pad, sw = round(6 * scale) + 2, size
    entries = [*LEGEND, (None, "number = object Dice")]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [sw + 4 + int(probe.textlength(t, font=font)) + 2 * pad for _, t in entries]
    rows, row, used = [], [], pad
    for e, w in zip(entries, widths, strict=True):
        if row and used + w > width:
            rows.append(row)
            row, used = [], pad
        row.append((e, w))
        used += w
    rows.append(row)
    line = size + 2 * pad
    strip = Image.new("RGB", (width, line * len(rows)), (255, 255, 255))
    d = ImageDraw.Draw(strip)
    for r, items in enumerate(rows):
        x, y = pad, r * line + pad
        for (key, text), w in items:
            if key is not None:
                d.rectangle([x, y, x + sw, y + sw], fill=COLORS[key], outline=(60, 60, 60))
                tx = x + sw + 4
            else:
                tx = x
            d.text((tx, y - 1), text, fill=(0, 0, 0), font=font)
            x += w
    return strip


def draw_error_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray,
                       objects: list[ObjectInfo] | None = None,
                       legend: bool = True) -> np.ndarray:
    """The error overlay (see the module doc) as ``uint8 (H + legend, W, 3)``.

    ``image``: ``uint8 (H, W, 3)``; ``pred``, ``truth``: ``(H, W)`` integer label images,
    0 = background; ``objects``: :func:`classify_objects` of them (computed if ``None``).
    """
    pred, truth = check_labels(pred), check_labels(truth)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != pred.shape:
        raise ValueError(f"image must be (H, W, 3) matching the labels {pred.shape}, "
                         f"got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if objects is None:
        objects = classify_objects(pred, truth)
    out = image.astype(np.float32)
    fills = {("pred", k): COLORS[k] for k in ("false", "merged", "split")}
    fills[("truth", "missed")] = COLORS["missed"]
    for side, lab in (("truth", truth), ("pred", pred)):
        kinds = {o.id: o.kind for o in objects if o.side == side}
        for kind in {k for k in kinds.values()}:
            color = fills.get((side, kind))
            if color is None:
                continue
            ids = [i for i, k in kinds.items() if k == kind]
            mask = np.isin(lab, ids)
            out[mask] = (1 - FILL_ALPHA) * out[mask] + FILL_ALPHA * np.array(color, np.float32)
    h, w = pred.shape
    thick = max(1, round(max(h, w) / 400))
    gt_edge = find_boundaries(truth, connectivity=1, mode="outer") & (truth == 0)
    gt_edge |= find_boundaries(truth, connectivity=1, mode="inner") & (pred == 0) & (truth > 0)
    pr_edge = find_boundaries(pred, connectivity=1, mode="inner") & (pred > 0)
    if thick > 1:
        from scipy import ndimage as ndi

        gt_edge = (ndi.binary_dilation(gt_edge, iterations=thick - 1) & (truth == 0)) | gt_edge
        pr_edge = ndi.binary_dilation(pr_edge, iterations=thick - 1) & (pred > 0)
    out[gt_edge] = COLORS["truth"]
    out[pr_edge] = COLORS["pred"]
    canvas = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    scale = max(1.0, max(h, w) / 800)
    font = _font(max(10, round(12 * scale)))
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        if o.side == "pred" or o.kind == "missed":
            draw.text((o.x, o.y), f"{o.dice:.2f}", fill=(255, 255, 255), font=font,
                      anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))
    if legend:
        strip = _legend(w, scale)
        full = Image.new("RGB", (w, h + strip.height), (255, 255, 255))
        full.paste(canvas, (0, 0))
        full.paste(strip, (0, h))
        canvas = full
    return np.asarray(canvas)


def thumbnail(image: np.ndarray, width: int = 240) -> np.ndarray:
    """A ``width`` px wide copy of ``uint8 (H, W, 3)`` (aspect kept, never enlarged)."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))),
                         Image.Resampling.LANCZOS)
    return np.asarray(img)


def write_error_overlay(out_dir: str | Path, stem: str, image: np.ndarray, pred: np.ndarray,
                        truth: np.ndarray) -> tuple[list[ObjectInfo], tuple[int, int]]:
    """Write ``<out_dir>/<stem>.png`` (:func:`draw_error_overlay`) and a 240 px wide
    ``<out_dir>/thumbs/<stem>.jpg`` (without the legend), atomically; returns the classified objects and the
    overlay's ``(width, height)`` (legend included)."""
    objects = classify_objects(pred, truth)
    drawn = draw_error_overlay(image, pred, truth, objects)
    out = Path(out_dir)
    write_image(out / f"{stem}.png", drawn)
    write_image(out / "thumbs" / f"{stem}.jpg", thumbnail(drawn[: pred.shape[0]]))
    return objects, (int(drawn.shape[1]), int(drawn.shape[0]))



def object_outlines(labels: np.ndarray, ids: set[int] | None = None,
                    tolerance: float = 1.0) -> dict[int, str]:
    """SVG path data (``d``, even-odd holes) of each object of ``labels`` ``(H, W)``
    (0 = background; only ``ids`` if given), in pixel-corner coordinates (pixel
    ``(row, col)`` covers ``[col, col + 1] x [row, row + 1]``), simplified to ``tolerance`` px."""
    from scipy import ndimage as ndi

    from glandseg.report.outputs import gland_polygons

    labels = check_labels(labels)
    out = {}
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or (ids is not None and idx not in ids):
            continue
        polys = gland_polygons(labels[sl] == idx, (sl[0].start, sl[1].start), tolerance)
        out[idx] = " ".join(
            "M" + " L".join(f"{x:g},{y:g}" for x, y in ring[:-1]) + "Z"
            for poly in polys for ring in poly)
    return out


def error_view(stem: str, objects: list[ObjectInfo], pred: np.ndarray, truth: np.ndarray,
               folder: str = "errors", image_size: tuple[int, int] | None = None) -> dict:
    """What the HTML report needs of one image's overlay: ``stem``, ``width``, ``height``
    (of the labels), ``image_width`` / ``image_height`` (of the overlay PNG, legend
    included; ``image_size``, default the labels'), ``image`` / ``thumb`` (paths relative
    to the report), ``counts``
    (:func:`error_counts`) and ``objects`` (each :class:`ObjectInfo` as a dict plus ``d``,
    its SVG outline, :func:`object_outlines`)."""
    outlines = {"pred": object_outlines(pred), "truth": object_outlines(truth)}
    objs = []
    for o in objects:
        d = o.to_dict()
        d["dice"] = round(o.dice, 4)
        d["x"], d["y"] = round(o.x, 1), round(o.y, 1)
        d["d"] = outlines[o.side].get(o.id, "")
        objs.append(d)
    h, w = pred.shape
    iw, ih = image_size or (w, h)
    return {"stem": stem, "width": int(w), "height": int(h), "image_width": int(iw),
            "image_height": int(ih),
            "image": f"{folder}/{stem}.png", "thumb": f"{folder}/thumbs/{stem}.jpg",
            "counts": error_counts(objects), "objects": objs}


def write_error_outputs(out_dir: str | Path, stem: str, image: np.ndarray, pred: np.ndarray,
                        truth: np.ndarray) -> dict:
    """:func:`write_error_overlay` plus ``<out_dir>/<stem>.json`` (:func:`error_view`, paths
    relative to the parent of ``out_dir``, where the report is). Returns the view."""
    import json

    from glandseg.data.io import write_text

    out = Path(out_dir)
    objects, size = write_error_overlay(out, stem, image, pred, truth)
    view = error_view(stem, objects, check_labels(pred), check_labels(truth), out.name, size)
    write_text(out / f"{stem}.json", json.dumps(view, separators=(",", ":")) + "\n")
    return view
