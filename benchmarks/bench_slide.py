"""Benchmark whole-slide inference: peak memory and time per tissue megapixel against the
slide's size (``glandseg.infer.slide``; the path ``glandseg predict SLIDE.tif`` takes).

Synthetic pyramidal slides of ``--sizes`` px (default 10k², 20k², 40k²) are made once into
``--cache`` (default ``/tmp/glandseg_bench_slides``, never the repo) by tiling GlaS
*training* images (cropped to 522x775) inside an elliptical "tissue section" covering
``--tissue`` of the slide (white glass around it), as a tiled pyramidal TIFF (zlib, 512²
tiles, 2x levels) with the GlaS resolution (0.62005 µm/px) in its tags. Each slide is then
segmented in a fresh subprocess: :func:`glandseg.infer.slide.predict_slide` (tissue mask,
windows, stitching) and :func:`glandseg.report.slide.write_slide_outputs` (pyramidal label
TIFF, GeoJSON, glands.csv rows, overlay), recording the peak RSS (``VmHWM``), the RSS once
the model is loaded, and the time of each phase per tissue megapixel, as wall-clock and as
CPU time (``getrusage`` of this process, all its threads, and its finished worker
processes; robust to other jobs on a shared machine). This checkout's ONNX runs put the
windows in worker processes as ``predict`` does (``--jobs``, auto: one per core; their
peak RSS each is ``peak_rss_worker_mib``).

Models (``--model``): ``stub`` (default; a "gland = dark after a 16x16 blur" contour
model, with the bundled model's post-processing, so the windows, reading,
watershed, stitching and outputs are those of a real run but the network costs almost
nothing) or any model spec (``glas-unet``, a run folder). Run::

    nice -n 19 .venv/bin/python benchmarks/bench_slide.py [--sizes 10000,20000,40000]
        [--model stub|glas-unet] [--tissue 0.3] [--threads 2] [--name NAME]

Results: ``benchmarks/results/slide_<name>.json`` (one object per slide, with the machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_GLAS = ROOT.parent / "shared" / "glas"
RESULTS = HERE / "results"
CELL = (522, 775)
GLAS_MPP = 0.62005
BACKGROUND = 243


# --- synthetic slides -----------------------------------------------------------------

def glas_cells(glas: Path, limit: int = 40) -> list[np.ndarray]:
    """GlaS training images at least 522x775, cropped to it (``uint8 (522, 775, 3)``)."""
    from glandseg.data.io import read_image

    cells = []
    for p in sorted(glas.glob("train_*"), key=lambda p: p.stem):
        if p.stem.endswith("_anno"):
            continue
        img = read_image(p)
        if img.shape[0] >= CELL[0] and img.shape[1] >= CELL[1]:
            cells.append(img[:CELL[0], :CELL[1]])
        if len(cells) >= limit:
            break
    if not cells:
        raise SystemExit(f"no GlaS training images in {glas}")
    return cells


class Mosaic:
    """A slide of ``n``² px: GlaS cells inside an ellipse covering ``tissue`` of it."""

    def __init__(self, n: int, tissue: float, cells: list[np.ndarray]) -> None:
        self.n, self.cells = n, cells
        r = math.sqrt(tissue / (math.pi * 1.3)) * n  # semi-axes 1.3 r (x) and r (y)
        self.ry, self.rx = min(r, 0.49 * n), min(1.3 * r, 0.49 * n)
        rows, cols = math.ceil(n / CELL[0]), math.ceil(n / CELL[1])
        cy = (np.arange(rows) + 0.5) * CELL[0] - n / 2
        cx = (np.arange(cols) + 0.5) * CELL[1] - n / 2
        inside = (cy[:, None] / self.ry) ** 2 + (cx[None, :] / self.rx) ** 2 <= 1
        idx = (np.arange(rows)[:, None] * 7919 + np.arange(cols)[None, :] * 104729) % len(cells)
        self.cell = np.where(inside, idx, -1)  # -1 = glass
        self.tissue_px = int(inside.sum()) * CELL[0] * CELL[1]

    def region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels of level ``level`` (2^level decimation, nearest) at ``(y, x)``."""
        d = 2 ** level
        ry = np.minimum(((np.arange(y, y + h) + 0.5) * d).astype(np.int64), self.n - 1)
        rx = np.minimum(((np.arange(x, x + w) + 0.5) * d).astype(np.int64), self.n - 1)
        ci, ly = ry // CELL[0], ry % CELL[0]
        cj, lx = rx // CELL[1], rx % CELL[1]
        out = np.full((h, w, 3), BACKGROUND, np.uint8)
        for i in np.unique(ci):
            rsel = np.flatnonzero(ci == i)
            for j in np.unique(cj):
                k = self.cell[i, j]
                if k < 0:
                    continue
                csel = np.flatnonzero(cj == j)
                out[rsel[0]:rsel[-1] + 1, csel[0]:csel[-1] + 1] = \
                    self.cells[k][ly[rsel][:, None], lx[csel][None, :]]
        return out


def build_slide(path: Path, n: int, tissue: float, glas: Path) -> dict:
    """Write the mosaic slide of ``n``² px to ``path`` (once); returns its description."""
    from glandseg.data.slide import write_pyramid

    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return json.loads(meta.read_text())
    mosaic = Mosaic(n, tissue, glas_cells(glas))
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    levels = write_pyramid(tmp, (n, n), mosaic.region, np.uint8, samples=3, tile=512,
                           min_side=1024, mpp=GLAS_MPP)
    os.replace(tmp, path)
    info = {"path": str(path), "size": n, "levels": levels, "tissue_fraction": tissue,
            "tissue_mp_cells": mosaic.tissue_px / 1e6, "bytes": path.stat().st_size,
            "build_s": round(time.perf_counter() - t0, 1)}
    meta.write_text(json.dumps(info, indent=1))
    return info


# --- the measured run (child process) --------------------------------------------------

def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _stub_predictor():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from glandseg.infer.predictor import Predictor
    from glandseg.models.store import resolve_config

    class SmoothDark(nn.Module):
        """Contour logits from the blurred darkness (16x16 box at stride 4, upsampled):
        glands = dark blobs."""

        stride = 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = F.avg_pool2d(x.mean(1, keepdim=True), 16, stride=4, padding=6,
                             count_include_pad=False)
            g = F.interpolate(g, size=x.shape[-2:], mode="bilinear", align_corners=False)
            t = g + 0.05
            return torch.cat([12 * t, -12 * t, torch.full_like(g, -8)], 1)

    cfg = resolve_config("glas-unet")[0].to_dict()
    cfg.pop("model", None)
    cfg.pop("model_args", None)
    return Predictor(SmoothDark(), cfg)


def _cpu() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
               for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def child(spec: dict) -> dict:
    import shutil

    from glandseg.data.slide import open_slide
    from glandseg.infer.predictor import Predictor
    from glandseg.infer.slide import SlideConfig, predict_slide
    from glandseg.report.slide import write_slide_outputs

    backend = spec.get("backend")
    if spec["model"] == "stub" or backend in (None, "torch"):
        import torch  # the ONNX backend runs without it (and its memory)

        torch.set_num_threads(spec["threads"])
    if spec["model"] == "stub":
        pred = _stub_predictor()
    elif backend is None:  # the code before the backends (--code of an older commit)
        pred = Predictor.from_name(spec["model"], device="cpu", deblur="auto")
    else:  # --deblur auto, as `predict` runs
        pred = Predictor.from_name(spec["model"], device="cpu", deblur="auto", backend=backend,
                                   threads=spec["threads"])
    work = Path(spec["work"])
    shutil.rmtree(work, ignore_errors=True)
    rss_model = _kib("VmRSS") / 1024
    jobs, per_job, pool = 1, None, contextlib.nullcontext()
    if backend == "onnx" or (backend == "auto" and getattr(pred, "backend", None) is not None
                             and pred.backend.name == "onnx"):
        # as `predict` runs a slide: windows in worker processes (--jobs, auto: one per core)
        from glandseg.engine.jobs import plan_jobs, worker_pool

        want = None if spec.get("jobs", "auto") == "auto" else int(spec["jobs"])
        jobs, per_job = plan_jobs(pred, 1 << 20, want, spec["threads"])
        pool = worker_pool(pred, None, jobs, per_job)
    t0, c0 = time.perf_counter(), _cpu()
    with open_slide(spec["slide"]) as slide:
        with pool as client:
            res = predict_slide(pred, slide, work / "cache", config=SlideConfig(),
                                progress=False, client=client, threads=per_job)
        peak_predict = _kib("VmHWM") / 1024
        t1, c1 = time.perf_counter(), _cpu()
        rows = write_slide_outputs(work / "out", "slide", res, res.mpp)
        t2, c2 = time.perf_counter(), _cpu()
    st = res.stats
    cache_mb = sum(p.stat().st_size for p in res.cache_dir.glob("*.npz")) / 2**20
    out_mb = {p.name: round(p.stat().st_size / 2**20, 1) for p in (work / "out").iterdir()}
    shutil.rmtree(work, ignore_errors=True)
    tissue = st.tissue_mp
    return {
        "model": spec["model"], "size": spec["size"], "threads": spec["threads"],
        "backend": getattr(getattr(pred, "backend", None), "name", "torch (code before backends)"),
        "code": spec.get("code") or "this checkout",
        "frame": list(st.frame), "windows": st.windows, "active_windows": st.active,
        "tissue_mp": round(tissue, 2), "glands": len(rows),
        "jobs": jobs, "threads_per_job": per_job,
        "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                     / 1024, 1) if jobs > 1 else None,
        "rss_model_mib": round(rss_model, 1), "peak_rss_predict_mib": round(peak_predict, 1),
        "peak_rss_mib": round(_kib("VmHWM") / 1024, 1),
        "predict_s": round(st.predict_s, 1), "stitch_s": round(st.stitch_s, 1),
        "segment_s": round(t1 - t0, 1), "outputs_s": round(t2 - t1, 1),
        "total_s": round(t2 - t0, 1),
        "cpu_segment_s": round(c1 - c0, 1), "cpu_outputs_s": round(c2 - c1, 1),
        "cpu_total_s": round(c2 - c0, 1),
        "predict_s_per_tissue_mp": round(st.predict_s / tissue, 3) if tissue else None,
        "total_s_per_tissue_mp": round((t2 - t0) / tissue, 3) if tissue else None,
        "cpu_s_per_tissue_mp": round((c2 - c0) / tissue, 3) if tissue else None,
        "cache_mib": round(cache_mb, 1), "outputs_mib": out_mb,
    }


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = dict(os.environ)
    if spec.get("code"):  # run another checkout's glandseg (e.g. a git worktree of an old commit)
        env["PYTHONPATH"] = spec["code"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({spec['size']}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,20000,40000")
    ap.add_argument("--model", default="stub")
    ap.add_argument("--tissue", type=float, default=0.3, help="fraction of the slide")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", default="auto",
                    help="worker processes of this checkout's ONNX runs (auto: as predict)")
    ap.add_argument("--glas", type=Path, default=DEFAULT_GLAS)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/glandseg_bench_slides"))
    ap.add_argument("--name", default=None, help="results file suffix (default: the model)")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"),
                    help="network backend of a real model (auto: onnx on the CPU)")
    ap.add_argument("--code", default=None, metavar="DIR",
                    help="run the slides with the glandseg of another checkout, e.g. a git "
                         "worktree of an older commit (its own backend; --backend ignored)")
    ap.add_argument("--baseline-code", default=None, metavar="DIR",
                    help="after each slide, run it again with the glandseg of DIR (e.g. a git "
                         "worktree of the commit before the ONNX backend) and report the ratio "
                         "of wall time and peak RSS in this run")
    ap.add_argument("--baseline-sizes", default=None,
                    help="sizes to run the baseline on (default: all of --sizes)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    mach = machine()
    print(json.dumps(mach))
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        path = args.cache / f"slide_{n}_t{args.tissue:g}.tif"
        info = build_slide(path, n, args.tissue, args.glas)
        print(f"slide {n}²: {info['bytes'] / 2**20:.0f} MiB, built in {info['build_s']} s",
              flush=True)
        spec = {"slide": str(path), "size": n, "model": args.model, "threads": args.threads,
                "work": str(args.cache / f"work_{n}"), "code": args.code, "jobs": args.jobs,
                "backend": None if args.code else args.backend}
        r = run_child(spec)
        r["slide"] = info
        r["load_1min_after"] = round(os.getloadavg()[0], 2)
        print(json.dumps(r), flush=True)
        if args.baseline_code and (args.baseline_sizes is None
                                   or str(n) in args.baseline_sizes.split(",")):
            base = run_child(spec | {"code": args.baseline_code, "backend": None})
            base["load_1min_after"] = round(os.getloadavg()[0], 2)
            r["baseline"] = base
            r["baseline_over_this"] = {
                k: round(base[k] / r[k], 2) for k in ("total_s", "predict_s", "outputs_s",
                                                      "cpu_total_s", "peak_rss_mib") if r[k]}
            print(json.dumps(r["baseline_over_this"]), flush=True)
        results.append(r)
    summary = summarize(results)
    RESULTS.mkdir(exist_ok=True)
    name = args.name or Path(args.model).name
    out = RESULTS / f"slide_{name}.json"
    out.write_text(json.dumps({"machine": mach, "args": {k: str(v) for k, v in vars(args).items()
                                                          if k != "child"},
                               "results": results, "summary": summary}, indent=1) + "\n")
    print(f"→ {out}")


def peak_rss_total(r: dict) -> float:
    """Peak RSS of a run in MiB: this process's plus, with worker processes, each worker's
    peak counted as the largest one's (an upper bound of the sum)."""
    return round(r["peak_rss_mib"] + r.get("jobs", 1) * (r.get("peak_rss_worker_mib") or 0)
                 if r.get("jobs", 1) > 1 else r["peak_rss_mib"], 1)


def summarize(results: list[dict]) -> dict:
    """Growth from the smallest slide to the largest (ratios)."""
    for r in results:
        r["peak_rss_total_mib"] = peak_rss_total(r)
    if len(results) > 1:
        a, b = results[0], results[-1]
        summary = {"peak_rss_total_ratio_largest_smallest": round(
                       b["peak_rss_total_mib"] / a["peak_rss_total_mib"], 3),
                   "peak_rss_ratio_largest_smallest": round(b["peak_rss_mib"] / a["peak_rss_mib"], 3),
                   "predict_s_per_tissue_mp_ratio": round(b["predict_s_per_tissue_mp"]
                                                          / a["predict_s_per_tissue_mp"], 3),
                   "total_s_per_tissue_mp_ratio": round(b["total_s_per_tissue_mp"]
                                                        / a["total_s_per_tissue_mp"], 3),
                   "cpu_s_per_tissue_mp_ratio": round(b["cpu_s_per_tissue_mp"]
                                                      / a["cpu_s_per_tissue_mp"], 3)}
        print(json.dumps(summary))
        return summary
    return {}


if __name__ == "__main__":
    main()
