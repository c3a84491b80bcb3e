"""Gland size statistics of the GlaS training annotations (train_N only, never Test A/B):
the numbers behind glas-maskrcnn v3's anchors (``anchor_sizes``, ``aspect_ratios``).

For every gland of every ``train_N_anno`` (full resolution, 0.62 µm/px): its bounding box
height h and width w (px), the anchor-like size sqrt(h * w) and the aspect ratio h / w
(torchvision's anchors: ratio = height / width, area = size²). Writes ``gland_sizes.json``
beside this script: quantiles of size and ratio, the share of glands each anchor set covers
(an anchor "covers" a gland when its IoU with the gland's box, both centred, is >= 0.7, the
RPN's positive threshold, or >= 0.5),
and the chosen v3 anchors.

Usage: python results/maskrcnn_v3/gland_sizes.py /work/shared/glas
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from glandseg.data.discover import discover  # noqa: E402
from glandseg.data.io import atomic_path, read_label  # noqa: E402

OUT = Path(__file__).with_name("gland_sizes.json")
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def boxes(root: str) -> np.ndarray:
    """``(N, 2)`` float: height, width of every training gland's bounding box (px)."""
    out = []
    for s in discover(root, splits=("train",)):
        lab = read_label(s.anno)
        for sl in ndi.find_objects(lab):
            if sl is not None:
                out.append((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
    return np.asarray(out, float)


def centred_iou(h: np.ndarray, w: np.ndarray, ah: float, aw: float) -> np.ndarray:
    inter = np.minimum(h, ah) * np.minimum(w, aw)
    return inter / (h * w + ah * aw - inter)


def coverage(hw: np.ndarray, sizes, ratios, scales=(1.0,), iou: float = 0.5) -> float:
    """Share of glands with some anchor of IoU >= ``iou`` (centred boxes)."""
    h, w = hw[:, 0], hw[:, 1]
    best = np.zeros(len(hw))
    for s in sizes:
        for k in scales:
            for r in ratios:  # torchvision: h = size * sqrt(r), w = size / sqrt(r)
                ah, aw = s * k * math.sqrt(r), s * k / math.sqrt(r)
                best = np.maximum(best, centred_iou(h, w, ah, aw))
    return float((best >= iou).mean())


def cover(hw: np.ndarray, sizes, ratios, scales=(1.0,)) -> dict:
    return {f"coverage_iou{int(i * 100)}": round(coverage(hw, sizes, ratios, scales, i), 4)
            for i in (0.5, 0.7)}


def main(root: str) -> dict:
    hw = boxes(root)
    size = np.sqrt(hw[:, 0] * hw[:, 1])
    ratio = hw[:, 0] / hw[:, 1]
    q = {f"q{int(p * 100):02d}": p for p in QUANTILES}
    # v2 (bundled, half resolution): sizes 24..384 at scale 0.5 = 48..768 px at full res
    v2 = {"sizes_full_res": [48, 96, 192, 384, 768], "aspect_ratios": [0.5, 1.0, 2.0]}
    # v3 (full resolution): one size per FPN level (strides 8..128) spanning the 1st..99th
    # size percentiles, 3 scales per octave (as RetinaNet) and 5 ratios spanning the
    # 5th..95th ratio percentiles
    lo, hi = np.quantile(size, 0.01), np.quantile(size, 0.99)
    v3_sizes = [32, 64, 128, 256, 512]
    v3_scales = [1.0, 2 ** (1 / 3), 2 ** (2 / 3)]
    v3_ratios = [0.4, 0.63, 1.0, 1.6, 2.5]
    doc = {
        "source": "GlaS train_N annotations (85 images, full resolution 0.62 um/px); "
                  "results/maskrcnn_v3/gland_sizes.py",
        "glands": len(hw),
        "size_px": {k: round(float(np.quantile(size, p)), 1) for k, p in q.items()},
        "height_over_width": {k: round(float(np.quantile(ratio, p)), 3) for k, p in q.items()},
        "size_range_1_99": [round(float(lo), 1), round(float(hi), 1)],
        "anchors": {
            "v2_at_full_res": {**v2, **cover(hw, v2["sizes_full_res"], v2["aspect_ratios"])},
            "v3": {"anchor_sizes": v3_sizes, "anchor_scales": [round(s, 4) for s in v3_scales],
                   "aspect_ratios": v3_ratios, **cover(hw, v3_sizes, v3_ratios, v3_scales)},
            "torchvision_default": {"anchor_sizes": [32, 64, 128, 256, 512],
                                    "aspect_ratios": [0.5, 1.0, 2.0],
                                    **cover(hw, [32, 64, 128, 256, 512], [0.5, 1.0, 2.0])},
        },
    }
    with atomic_path(OUT) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/glas"), indent=2))
