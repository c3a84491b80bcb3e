"""Benchmark ``glandseg predict`` as a user runs it: whole processes, wall time, interleaved.

Variants, each a fresh ``glandseg predict IMAGES --out DIR -q`` process:

- ``onnx``: today's default on the CPU (ONNX Runtime in one worker process per core;
  torch never imported);
- ``onnx-1job``: the same in one process (``--jobs 1``), to show what the workers add;
- ``torch``: today's code with ``--backend torch`` (the fair baseline: same pipeline, the
  network in torch);
- ``old``: the code of ``--old-commit`` (default 4beb0fe, the last commit before the ONNX
  backend), checked out into a temporary git worktree and run from it with the same venv.

Sets: ``crop`` (one 256x256 crop of testA_1: start-up dominated), ``20`` (testA_1-10 and
testB_1-10), ``80`` (all of Test A and B). Rounds are interleaved (onnx, torch, old, onnx,
...) so a busy machine slows all alike; each figure is the median over ``--rounds``.

Also measured: the same glands (pooled F1 and object Dice of one variant's labels scored
against the other's, on the 20 or 80 images), and, in this process, the marginal cost per
image of the default backend split into its shares (read, network, post-processing,
uncertainty, grading, outputs written), per image and per megapixel.

Run::

    .venv/bin/python benchmarks/bench_predict.py [--rounds 2] [--sets crop,20,80]
        [--old-commit 4beb0fe] [--glas ../shared/glas]

Results: ``benchmarks/results/predict.json`` and ``predict.md`` (quoted by the README).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def image_sets(glas: Path, tmp: Path) -> dict[str, list[Path]]:
    from glandseg.data.io import read_image, write_image

    crop = tmp / "crop" / "testA_1_crop256.png"
    crop.parent.mkdir(parents=True)
    write_image(crop, read_image(glas / "testA_1.png")[:256, :256])
    a = [glas / f"testA_{i}.png" for i in range(1, 61)]
    b = [glas / f"testB_{i}.png" for i in range(1, 21)]
    return {"crop": [crop], "20": a[:10] + b[:10], "80": a + b}


def run_predict(variant: str, images: list[Path], out: Path, old_tree: Path | None) -> dict:
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "glandseg", "-q", "predict", *map(str, images),
           "--out", str(out)]
    if variant == "torch":
        cmd += ["--backend", "torch"]
    if variant == "onnx-1job":
        cmd += ["--jobs", "1"]
    if variant == "old":
        env["PYTHONPATH"] = str(old_tree)
    before = os.times()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    after = os.times()
    if r.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{r.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                           - before.children_system)
    return {"wall_s": wall, "cpu_s": cpu}


def labels_of(folder: Path, stems: list[str]) -> dict[str, np.ndarray]:
    from glandseg.data.io import read_label

    return {s: read_label(folder / f"{s}.png") for s in stems}


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """Pooled F1 / object Dice of ``a`` scored against ``b`` as truth, per test part."""
    import glandseg

    m = glandseg.score(a, b)
    return {part: {"f1": round(v["pooled"]["f1"], 4),
                   "object_dice": round(v["pooled"]["object_dice"], 4),
                   "identical_images": sum(int(np.array_equal(a[s], b[s]))
                                           for s in a if s.startswith(part))}
            for part, v in m.items()}


def marginal_costs(images: list[Path], tmp: Path) -> dict:
    """Cost per image and per megapixel of a default (ONNX) predict in this process, after
    a warm-up: wall and CPU time (this process and its worker processes) of the default
    run (worker processes: ``--jobs`` auto), and the shares of each stage measured in a
    one-process run (``jobs=1``; seconds of that run, per image and per MP)."""
    import resource

    import glandseg.engine.predict as batch  # the pipeline: reads, predicts, uncertainty
    import glandseg.grade.engine as engine
    import glandseg.infer.backend as backend
    import glandseg.infer.predictor as predictor
    import glandseg.report.outputs as outputs
    from glandseg.data.io import read_image
    from glandseg.engine.jobs import plan_jobs

    shares = dict.fromkeys(("read", "network", "postprocess", "uncertainty", "grading",
                            "outputs"), 0.0)

    def timed(owner, name, share):
        fn = getattr(owner, name)

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                shares[share] += time.perf_counter() - t0
        setattr(owner, name, wrapper)
        return lambda: setattr(owner, name, fn)

    from glandseg.engine.grade import open_grader

    pred = predictor.Predictor.from_name("glas-unet", deblur="auto")  # as `predict` runs
    assert pred.backend.name == "onnx"
    grader = open_grader(pred, None)
    mp = sum(read_image(p).shape[0] * read_image(p).shape[1] for p in images) / 1e6
    n = len(images)
    jobs, per_job = plan_jobs(pred, n, None, pred.backend.threads, grader)
    batch.predict_files(images[:2], tmp / "warm", pred, progress=False, grader=grader)

    def usage() -> float:
        return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                   for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    c0, t0 = usage(), time.perf_counter()
    batch.predict_files(images, tmp / "marginal", pred, progress=False, grader=grader)
    total, cpu = time.perf_counter() - t0, usage() - c0
    undo = [timed(backend.OnnxBackend, "run", "network"),
            timed(predictor.Predictor, "postprocess", "postprocess"),
            timed(engine.ImageGrader, "grade", "grading"),
            timed(outputs, "write_outputs", "outputs"),
            timed(batch, "read_image", "read"),
            timed(batch, "uncertainty", "uncertainty")]
    batch.predict_files(images[:1], tmp / "warm1", pred, progress=False, grader=grader, jobs=1)
    for k in shares:
        shares[k] = 0.0
    t0 = time.perf_counter()
    batch.predict_files(images, tmp / "serial", pred, progress=False, grader=grader, jobs=1)
    serial = time.perf_counter() - t0
    for u in undo:
        u()
    shares["other (deblur check, resampling, CSV/HTML, bookkeeping)"] = serial - sum(shares.values())
    return {"images": n, "megapixels": round(mp, 3), "jobs": jobs, "threads_per_job": per_job,
            "total_s": round(total, 2), "cpu_s": round(cpu, 2),
            "per_image_s": round(total / n, 3), "per_mp_s": round(total / mp, 3),
            "cpu_per_mp_s": round(cpu / mp, 3),
            "one_process": {"total_s": round(serial, 2), "per_mp_s": round(serial / mp, 3),
                            "threads": pred.backend.threads},
            "shares_per_image_s": {k: round(v / n, 4) for k, v in shares.items()},
            "shares_per_mp_s": {k: round(v / mp, 4) for k, v in shares.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sets", default="crop,20,80")
    ap.add_argument("--old-commit", default="4beb0fe")
    ap.add_argument("--glas", type=Path, default=ROOT.parent / "shared" / "glas")
    ap.add_argument("--name", default="predict",
                    help="results file name (without suffix), e.g. predict_epyc for a 2nd CPU")
    args = ap.parse_args()
    sets = args.sets.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="glandseg_bench_predict_"))
    old_tree = tmp / "old"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(old_tree), args.old_commit],
                   cwd=ROOT, check=True, capture_output=True)
    try:
        imgs = image_sets(args.glas, tmp)
        plan = {"crop": ["onnx", "torch"], "20": ["onnx", "torch", "onnx-1job"],
                "80": ["onnx", "old", "onnx-1job"]}
        times: dict[str, dict[str, list[dict]]] = {s: {v: [] for v in plan[s]} for s in sets}
        for r in range(args.rounds):
            for s in sets:
                for v in plan[s]:
                    out = tmp / f"out_{s}_{v}_{r}"
                    times[s][v].append(run_predict(v, imgs[s], out, old_tree))
                    print(f"round {r} set {s} {v}: {times[s][v][-1]['wall_s']:.1f} s",
                          flush=True)
        summary = {}
        for s in sets:
            med = {v: {k: statistics.median(t[k] for t in runs) for k in ("wall_s", "cpu_s")}
                   for v, runs in times[s].items()}
            base = "torch" if "torch" in med else "old"
            summary[s] = {"images": len(imgs[s]), "median": med,
                          "speedup_wall": round(med[base]["wall_s"] / med["onnx"]["wall_s"], 2),
                          "speedup_cpu": round(med[base]["cpu_s"] / med["onnx"]["cpu_s"], 2),
                          "baseline": base, "rounds": times[s]}
            if s != "crop":
                stems = [p.stem for p in imgs[s]]
                summary[s]["same_glands"] = agreement(
                    labels_of(tmp / f"out_{s}_onnx_0", stems),
                    labels_of(tmp / f"out_{s}_{base}_0", stems))
        marginal = marginal_costs(imgs["20"], tmp)
        res = {"machine": machine(), "args": vars(args) | {"glas": str(args.glas)},
               "load_before": os.getloadavg(), "sets": summary, "marginal": marginal}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=1, default=str)
                                                     + "\n")
        (RESULTS / f"{args.name}.md").write_text(report(res))
        print(report(res))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT,
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def report(res: dict) -> str:
    lines = ["# `glandseg predict`, whole process: ONNX Runtime (default) vs torch vs the "
             "previous code", "",
             f"Machine: {res['machine']}; load average at start {res['load_before']}; "
             f"`{' '.join(['benchmarks/bench_predict.py'] + [f'--{k} {v}' for k, v in res['args'].items()])}`",
             "", "| set | images | default (onnx) s | baseline | baseline s | speed-up (wall) "
             "| speed-up (CPU) | same glands (pooled F1 / object Dice, per part) |",
             "|---|---|---|---|---|---|---|---|"]
    for s, v in res["sets"].items():
        base = v["baseline"]
        name = {"torch": "`--backend torch`", "old": "commit " + res["args"]["old_commit"]}[base]
        if "onnx-1job" in v["median"]:
            name += f" (default with `--jobs 1`: {v['median']['onnx-1job']['wall_s']:.1f} s)"
        same = "; ".join(f"{p}: {a['f1']:.4f} / {a['object_dice']:.4f} "
                         f"({a['identical_images']} identical)"
                         for p, a in v.get("same_glands", {}).items()) or "-"
        lines.append(f"| {s} | {v['images']} | {v['median']['onnx']['wall_s']:.1f} | {name} | "
                     f"{v['median'][base]['wall_s']:.1f} | **{v['speedup_wall']}x** | "
                     f"{v['speedup_cpu']}x | {same} |")
    m = res["marginal"]
    one = m["one_process"]
    lines += ["", f"Marginal cost of the default backend, {m['images']} GlaS images "
              f"({m['megapixels']} MP) in one `predict_files` call after a warm-up, "
              f"{m['jobs']} worker process(es) x {m['threads_per_job']} thread(s) (the default "
              f"here): **{m['per_mp_s']} s per megapixel** end to end ({m['per_image_s']} s "
              f"per image; CPU time of all processes {m['cpu_per_mp_s']} s/MP). In one "
              f"process (`--jobs 1`): {one['per_mp_s']} s/MP, of which, per MP:", ""]
    lines += [f"- {k}: {v} s" for k, v in m["shares_per_mp_s"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
