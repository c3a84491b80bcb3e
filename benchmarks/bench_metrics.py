"""Time ``glandseg score`` against a plain per-object baseline on all 80 GlaS test images.

Predictions are derived from the 80 GlaS test annotations by deterministic perturbations
(seeded): in every image some glands are missed, some split in two, some pairs of
neighbours merged under one id (bridged), false blobs are added in the background, and
the boundaries are eroded, dilated or shifted by a few pixels; every 10th prediction has
its ids permuted to large non-contiguous values (a 32-bit TIFF), and 2 predictions are
empty. They are written to a temporary folder next to a folder of links to the 80 test
annotations (nothing of GlaS is copied).

Both sides run as whole processes, as a user runs them: ``glandseg score PRED GT --json
--csv`` and ``python benchmarks/metrics_baseline.py PRED GT --json`` (see that file:
bounding-box crops, ``regionprops``, ``distance_transform_edt``; no vectorising). They
are timed interleaved (the order alternates each round) and repeated, so that the load
of a shared machine hits both alike; the ratio of each round is reported with its
spread. Their figures are compared: every per-image sum (TP/FP/FN, areas, area-weighted
Dice and Hausdorff), the per-image scores and the pooled and per-image-mean scores of
each part. Results go to ``benchmarks/results/metrics.json`` and ``metrics.md``. Run::

    nice -n 19 .venv/bin/python benchmarks/bench_metrics.py [--glas DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from glandseg.data.io import read_label, write_label, write_text
from glandseg.metrics.glas import ObjectStats
from glandseg.metrics.score import part_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_GLAS = ROOT.parent / "shared" / "glas"
SUM_FIELDS = ("dice_pred", "dice_gt", "hausdorff_pred", "hausdorff_gt")
COUNT_FIELDS = ("n_pred", "n_gt", "tp", "fp", "fn", "area_pred", "area_gt")
SCORES = ("f1", "object_dice", "object_hausdorff")


# ------------------------------------------------------------- perturbations


def _cut(mask_r: np.ndarray, mask_c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which pixels of an object (given by its rows and columns) go to the second half."""
    return mask_c > mask_c.mean() if rng.random() < 0.5 else mask_r > mask_r.mean()


def perturb(gt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A prediction derived from ``gt`` (label image ``(H, W)``, 0 = background).

    Returns ``(labels int64 (H, W), description)``: boundaries eroded, dilated or shifted;
    ~15 % of glands missed, ~20 % split, ~20 % merged with their nearest neighbour
    (bridged by a dilation), 1-4 false discs in the background.
    """
    h, w = gt.shape
    k = int(rng.integers(1, 5)) * 2 + 1
    mode = ("eroded", "dilated", "shifted")[int(rng.integers(0, 3))]
    if mode == "eroded":
        uniform = ndimage.minimum_filter(gt, k) == ndimage.maximum_filter(gt, k)
        out = np.where(uniform, gt, 0).astype(np.int64)
    elif mode == "dilated":
        out = np.where(gt > 0, gt, ndimage.grey_dilation(gt, size=(k, k))).astype(np.int64)
    else:
        dy, dx = (int(v) for v in rng.integers(-8, 9, size=2))
        out = np.zeros(gt.shape, np.int64)
        out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = gt[
            max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)]
    ids = [int(i) for i in np.unique(out) if i]
    nxt = int(out.max()) + 1
    n_drop = n_split = n_merge = 0
    centroids = dict(zip(ids, ndimage.center_of_mass(out > 0, out, ids), strict=True))
    merged: set[int] = set()
    for i in ids:
        u = rng.random()
        if not (out == i).any():  # merged into an earlier gland
            continue
        if u < 0.15:  # missed
            out[out == i] = 0
            n_drop += 1
        elif u < 0.35:  # split in two
            rr, cc = np.nonzero(out == i)
            cut = _cut(rr, cc, rng)
            out[rr[cut], cc[cut]] = nxt
            nxt += 1
            n_split += 1
        elif u < 0.55 and i not in merged:  # merged with its nearest neighbour, bridged
            others = [j for j in ids if j != i and j not in merged and (out == j).any()]
            if not others:
                continue
            ci = np.array(centroids[i])
            j = min(others, key=lambda j: float(np.hypot(*(np.array(centroids[j]) - ci))))
            both = (out == i) | (out == j)
            bridge = ndimage.binary_closing(both, np.ones((15, 15)), border_value=0) & (out == 0)
            out[both | bridge] = i
            merged.update((i, j))
            n_merge += 1
    yy, xx = np.ogrid[:h, :w]
    n_blob = int(rng.integers(1, 5))
    for _ in range(n_blob):
        cy, cx, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(5, 30))
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (out == 0)
        if disc.any():
            out[disc] = nxt
            nxt += 1
    desc = (f"{mode} k={k}, {n_drop} missed, {n_split} split, {n_merge} merged, "
            f"{n_blob} false")
    return out, desc


def make_predictions(glas: Path, work: Path, seed: int) -> tuple[Path, Path, dict[str, str]]:
    """Write the perturbed predictions and links to the test annotations under ``work``.

    Returns ``(pred_dir, gt_dir, {stem: description})``.
    """
    pred_dir, gt_dir = work / "pred", work / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    annos = sorted(glas.glob("test*_anno.png"),
                   key=lambda p: (p.name.split("_")[0], int(p.name.split("_")[1])))
    rng = np.random.default_rng(seed)
    kinds = {}
    for n, anno in enumerate(annos):
        stem = anno.name[: -len("_anno.png")]
        (gt_dir / anno.name).symlink_to(anno.resolve())
        gt = read_label(anno)
        pred, desc = perturb(gt, rng)
        if n % 40 == 39:
            pred, desc = np.zeros_like(pred), "empty"
        if n % 10 == 5:  # large, non-contiguous ids: 32-bit TIFF
            import tifffile

            ids = np.unique(pred)
            lut = np.zeros(int(pred.max()) + 1, np.uint32)
            lut[ids[ids > 0]] = 100_000 + 7 * rng.permutation(int((ids > 0).sum()))
            tifffile.imwrite(pred_dir / f"{stem}.tif", lut[pred])
            desc += ", ids permuted to >= 100000"
        else:
            write_label(pred_dir / f"{stem}.png", pred)
        kinds[stem] = desc
    return pred_dir, gt_dir, kinds


# ------------------------------------------------------------------------ run


def _timed(cmd: list[str]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of a subprocess (cpu = user + system of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


#: The part of ``glandseg score`` that is not the metrics: interpreter start, imports,
#: finding and reading the 160 label files (run as its own process).
FLOOR = """
import sys
from glandseg.metrics.score import find_pairs
from glandseg.data.io import read_label
for _, p, g in find_pairs(sys.argv[1], sys.argv[2]):
    read_label(p), read_label(g)
"""


def compute_only(pred_dir: Path, gt_dir: Path) -> dict:
    """CPU seconds of the metric computation alone, in this process (files read first)."""
    from metrics_baseline import image_sums

    from glandseg.metrics.glas import image_stats
    from glandseg.metrics.score import find_pairs

    pairs = [(read_label(p), read_label(g)) for _, p, g in find_pairs(pred_dir, gt_dir)]
    out = {}
    for name, fn in (("glandseg", image_stats), ("baseline", image_sums)):
        t = time.process_time()
        for p, g in pairs:
            fn(p, g)
        out[f"{name}_cpu_s"] = time.process_time() - t
    out["ratio"] = out["baseline_cpu_s"] / out["glandseg_cpu_s"]
    return out


def _read_ours(csv_path: Path, json_path: Path) -> tuple[dict, dict]:
    with open(csv_path, newline="") as f:
        rows = {r["stem"]: r for r in csv.DictReader(f)}
    return rows, json.loads(json_path.read_text())


def compare(ours_rows: dict, ours_summary: dict, base: dict, pred_dir: Path,
            gt_dir: Path) -> dict:
    """Largest differences between glandseg's figures and the baseline's.

    Per image: counts must be equal (else AssertionError), scores compared as written by
    ``glandseg score --csv``; sums compared in-process (``image_stats``, not timed); pooled
    and per-image-mean scores per part from ``--json``.
    """
    from glandseg.metrics.glas import image_stats

    assert set(ours_rows) == set(base), "the two sides scored different images"
    worst_score = worst_sum = 0.0
    stats = {}
    for stem, b in base.items():
        s_b = ObjectStats(**b)
        stats[stem] = s_b
        row = ours_rows[stem]
        for name in ("n_pred", "n_gt", "tp", "fp", "fn"):
            if int(row[name]) != getattr(s_b, name):
                raise AssertionError(f"{stem}: {name} {row[name]} != {getattr(s_b, name)}")
        for name in SCORES:
            worst_score = max(worst_score, abs(float(row[name]) - s_b.scores()[name]))
        pred_path = next(pred_dir / f"{stem}{e}" for e in (".png", ".tif")
                         if (pred_dir / f"{stem}{e}").is_file())
        s_a = image_stats(read_label(pred_path), read_label(gt_dir / f"{stem}_anno.png"))
        for name in COUNT_FIELDS:
            if getattr(s_a, name) != getattr(s_b, name):
                raise AssertionError(f"{stem}: {name} {getattr(s_a, name)} != "
                                     f"{getattr(s_b, name)}")
        for name in SUM_FIELDS:
            x, y = getattr(s_a, name), getattr(s_b, name)
            worst_sum = max(worst_sum, abs(x - y) / max(1.0, abs(y)))
    worst_part = 0.0
    parts = {}
    for part, entry in ours_summary.items():
        mine = [s for stem, s in stats.items() if part_of(stem) == part]
        pooled = ObjectStats.pool(mine)
        for name in ("tp", "fp", "fn"):
            if entry["pooled"][name] != getattr(pooled, name):
                raise AssertionError(f"{part} pooled {name} differs")
        for name in SCORES:
            worst_part = max(worst_part, abs(entry["pooled"][name] - pooled.scores()[name]))
            mean = math.fsum(s.scores()[name] for s in mine) / len(mine)
            worst_part = max(worst_part, abs(entry["per_image"][name] - mean))
        parts[part] = {"n_images": len(mine), **{k: pooled.scores()[k] for k in SCORES},
                       "tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn}
    return {"max_abs_diff_per_image_scores": worst_score,
            "max_rel_diff_per_image_sums": worst_sum,
            "max_abs_diff_part_scores": worst_part, "parts": parts}


def report(res: dict) -> str:
    """The Markdown results page."""
    m, t = res["machine"], res["timing"]
    lines = [
        "# GlaS metrics benchmark (`benchmarks/bench_metrics.py`)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores, {m['ram_gib']} GiB RAM, 1-min load "
        f"{m['load_1min']} at start; Python {m['python']}. The CPU is shared with other "
        "work: the two sides are timed interleaved (order alternating per round) and "
        "repeated, and each round's ratio is given.",
        "",
        f"Data: the {res['n_images']} GlaS test images; predictions derived from the "
        f"truth with {res['n_pred_objects']} objects against {res['n_gt_objects']} true "
        "glands (missed, split, merged, false glands; eroded, dilated or shifted; ids "
        "permuted to >= 100000 in every 10th; 2 empty). Whole process timed, start-up and "
        "reading the 160 label files included.",
        "",
        "| round | order | `glandseg score` wall (CPU) s | baseline wall (CPU) s | "
        "ratio wall (CPU) | start-up + reading only, wall (CPU) s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in t["rounds"]:
        lines.append(f"| {r['round']} | {r['order']} | {r['glandseg_s']:.2f} "
                     f"({r['glandseg_cpu_s']:.2f}) | {r['baseline_s']:.2f} "
                     f"({r['baseline_cpu_s']:.2f}) | {r['ratio']:.1f}x ({r['cpu_ratio']:.1f}x) | "
                     f"{r['floor_s']:.2f} ({r['floor_cpu_s']:.2f}) |")
    c = t["compute_only"]
    lines += [
        "",
        f"Median: glandseg **{t['glandseg_median_s']:.2f} s**, baseline "
        f"**{t['baseline_median_s']:.2f} s**, speed-up **{t['ratio_median']:.1f}x** "
        f"(per-round wall ratios {t['ratio_min']:.1f}x to {t['ratio_max']:.1f}x; CPU-time "
        f"ratio {t['cpu_ratio_median']:.1f}x). Of glandseg's whole process, "
        f"{t['floor_cpu_median_s']:.2f} s CPU is interpreter start, imports (numpy, scipy, "
        "PIL) and reading the 160 label files, which the baseline pays as well.",
        "",
        f"Metric computation alone (in one process, files already read, CPU time): glandseg "
        f"{c['glandseg_cpu_s']:.2f} s, baseline {c['baseline_cpu_s']:.2f} s, "
        f"**{c['ratio']:.1f}x**.",
        "",
        "Figures: TP/FP/FN and object areas identical in every image; largest difference "
        f"of a per-image score {res['check']['max_abs_diff_per_image_scores']:.3g}, of a "
        f"per-image area-weighted sum (relative) {res['check']['max_rel_diff_per_image_sums']:.3g}, "
        f"of a pooled or per-image-mean part score "
        f"{res['check']['max_abs_diff_part_scores']:.3g} (0 = identical to the last bit; both "
        "sides sum with `math.fsum`).",
        "",
        "| part | images | pooled F1 | pooled object Dice | pooled object Hausdorff | TP | FP | FN |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for part, p in res["check"]["parts"].items():
        lines.append(f"| {part} | {p['n_images']} | {p['f1']:.4f} | {p['object_dice']:.4f} | "
                     f"{p['object_hausdorff']:.2f} | {p['tp']} | {p['fp']} | {p['fn']} |")
    lines += ["", "Baseline: `benchmarks/metrics_baseline.py` (per object: `regionprops` "
              "boxes, best partner by `bincount` in the box, Hausdorff by "
              "`distance_transform_edt` on the crop of the two boxes, an unmatched object "
              "against every object of the other image as in the official MATLAB code)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glas", type=Path,
                    default=Path(os.environ.get("GLANDSEG_GLAS", DEFAULT_GLAS)))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "metrics")
    args = ap.parse_args(argv)
    if not any(args.glas.glob("test*_anno.png")):
        print(f"no GlaS test annotations in {args.glas}; pass --glas or set GLANDSEG_GLAS")
        return 2
    m = machine()
    glandseg = str(Path(sys.executable).with_name("glandseg"))
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        work = Path(tmp)
        pred_dir, gt_dir, kinds = make_predictions(args.glas, work, args.seed)
        ours_cmd = [glandseg, "score", str(pred_dir), str(gt_dir), "--json",
                    str(work / "ours.json"), "--csv", str(work / "ours.csv")]
        base_cmd = [sys.executable, str(HERE / "metrics_baseline.py"), str(pred_dir),
                    str(gt_dir), "--json", str(work / "base.json")]
        floor_cmd = [sys.executable, "-c", FLOOR, str(pred_dir), str(gt_dir)]
        cmds = {"glandseg": ours_cmd, "baseline": base_cmd, "floor": floor_cmd}
        rounds = []
        for r in range(args.rounds):
            order = ("glandseg", "baseline") if r % 2 == 0 else ("baseline", "glandseg")
            t = {who: _timed(cmds[who]) for who in (*order, "floor")}
            rounds.append({
                "round": r + 1, "order": " then ".join(order),
                "glandseg_s": t["glandseg"][0], "baseline_s": t["baseline"][0],
                "glandseg_cpu_s": t["glandseg"][1], "baseline_cpu_s": t["baseline"][1],
                "floor_s": t["floor"][0], "floor_cpu_s": t["floor"][1],
                "ratio": t["baseline"][0] / t["glandseg"][0],
                "cpu_ratio": t["baseline"][1] / t["glandseg"][1],
            })
            print(f"round {r + 1}: glandseg {t['glandseg'][0]:.2f} s, baseline "
                  f"{t['baseline'][0]:.2f} s, ratio {rounds[-1]['ratio']:.1f}x "
                  f"(cpu {rounds[-1]['cpu_ratio']:.1f}x)", file=sys.stderr)
        compute = compute_only(pred_dir, gt_dir)
        rows, summary = _read_ours(work / "ours.csv", work / "ours.json")
        base = json.loads((work / "base.json").read_text())
        check = compare(rows, summary, base, pred_dir, gt_dir)
    ratios = [r["ratio"] for r in rounds]
    res = {
        "command": "nice -n 19 .venv/bin/python benchmarks/bench_metrics.py"
        + "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": m,
        "n_images": len(base),
        "n_pred_objects": sum(b["n_pred"] for b in base.values()),
        "n_gt_objects": sum(b["n_gt"] for b in base.values()),
        "predictions": kinds,
        "timing": {
            "rounds": rounds,
            "glandseg_median_s": statistics.median(r["glandseg_s"] for r in rounds),
            "baseline_median_s": statistics.median(r["baseline_s"] for r in rounds),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rounds),
            "floor_cpu_median_s": statistics.median(r["floor_cpu_s"] for r in rounds),
            "compute_only": compute,
        },
        "check": check,
    }
    text = report(res)
    print(text)
    write_text(args.out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    write_text(args.out.with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
