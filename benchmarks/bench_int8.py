"""int8 vs fp32 ONNX graph of the bundled ``glas-unet``: glands on the validation patients
and speed on this CPU (issue 19: ship int8 only within 0.005 of fp32's F1 and object Dice).

``--make`` first (re)makes ``glandseg/weights/glas-unet.int8.onnx``
(:func:`glandseg.infer.predictor.export_int8`), calibrated on GlaS *training* images of the
model's training patients (every 6th image by name; the validation patients named in the
model card, 4, 5, 6, 11, 14 and 15, are left out so that they stay unseen).

Then, on the 18 validation-patient images (official pooled F1, object Dice and object
Hausdorff against the annotations; also the per-image mean F1, labelled so): fp32 and int8,
and the agreement of int8's glands with fp32's (F1 / object Dice of one scored against the
other); speed: the network alone (1 thread, the same inputs, interleaved rounds) and the
whole per-image pipeline (read, network, post-processing; 1 thread, interleaved).
No test image is used.

On a CPU without int8 dot-product instructions (x86 without VNNI/AMX) glandseg refuses
int8 (:func:`glandseg.infer.backend.int8_unsupported`); ``--any-cpu`` measures it there
anyway (to show why), written under ``--name`` (e.g. ``int8_avx2``) so as not to replace the
figures of a CPU where it runs.

Run::

    .venv/bin/python benchmarks/bench_int8.py [--make] [--glas ../shared/glas] [--rounds 2]
    .venv/bin/python benchmarks/bench_int8.py --any-cpu --name int8_avx2 --rounds 1

Results: ``benchmarks/results/int8.json`` and ``int8.md`` (quoted by the README).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
WEIGHTS = ROOT / "glandseg" / "weights"


def validation_patients() -> set[int]:
    card = json.loads((WEIGHTS / "glas-unet.json").read_text())["model_card"]["data"]
    found = re.search(r"patients \(([\d, ]+)\)", card)
    if not found:
        raise SystemExit("glas-unet.json: no validation patients in the model card")
    return {int(p) for p in found.group(1).split(",")}


def pooled(items) -> dict:
    from glandseg.metrics.glas import ObjectStats
    from glandseg.metrics.score import evaluate_pairs

    res = evaluate_pairs(items)
    st = ObjectStats.pool(r.stats for r in res)
    return {"f1": round(st.f1, 4), "object_dice": round(st.object_dice, 4),
            "object_hausdorff": round(st.object_hausdorff, 2),
            "per_image_mean_f1": round(float(np.mean([r.stats.f1 for r in res])), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make", action="store_true")
    ap.add_argument("--glas", type=Path, default=ROOT.parent / "shared" / "glas")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--any-cpu", action="store_true",
                    help="measure int8 on a CPU where glandseg refuses it")
    ap.add_argument("--name", default="int8", help="results file name (without suffix)")
    args = ap.parse_args()

    from glandseg.infer.backend import INT8_ANY_CPU_ENV, int8_unsupported

    refused = int8_unsupported()
    if refused and not args.any_cpu:
        raise SystemExit(f"{refused}; --any-cpu measures it anyway (with --name)")
    if refused:
        os.environ[INT8_ANY_CPU_ENV] = "1"

    from glandseg.data.discover import discover
    from glandseg.data.io import read_image, read_label
    from glandseg.infer.predictor import Predictor, export_int8, pad_to_stride

    val_patients = validation_patients()
    train = sorted((s for s in discover(args.glas, splits=("train",))),
                   key=lambda s: int(s.name.split("_")[1]))
    val = [s for s in train if s.patient in val_patients]
    calib = [s for s in train if s.patient not in val_patients][::6]
    if args.make:
        t0 = time.perf_counter()
        path = export_int8("glas-unet", [s.image for s in calib],
                           WEIGHTS / "glas-unet.int8.onnx",
                           source=f"GlaS training images {', '.join(s.name for s in calib)} "
                                  "(training patients; every 6th)")
        print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    preds = {p: Predictor.from_name("glas-unet", backend="onnx", threads=1, deblur="auto",
                                    precision=p) for p in ("fp32", "int8")}
    images = [read_image(s.image) for s in val]
    truths = [read_label(s.anno, what="annotation") for s in val]
    labels = {p: [pr.predict(im) for im in images] for p, pr in preds.items()}
    quality = {p: pooled([(s.name, lab, gt) for s, lab, gt in zip(val, labels[p], truths,
                                                                   strict=True)])
               for p in preds}
    agree = pooled([(s.name, a, b) for s, a, b in zip(val, labels["int8"], labels["fp32"],
                                                      strict=True)])
    xs = [pad_to_stride(preds["fp32"].normalise(im)[None], 32, "edge") for im in images]
    net: dict[str, list[float]] = {p: [] for p in preds}
    whole: dict[str, list[float]] = {p: [] for p in preds}
    for _ in range(args.rounds):
        for p, pr in preds.items():
            t0 = time.perf_counter()
            for x in xs:
                pr.backend.run(x)
            net[p].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for s in val:
                pr.predict(read_image(s.image))
            whole[p].append(time.perf_counter() - t0)
    mp = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    speed = {p: {"network_s_per_mp": round(statistics.median(net[p]) / mp, 3),
                 "pipeline_s_per_mp": round(statistics.median(whole[p]) / mp, 3)}
             for p in preds}
    res = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
           "validation_images": [s.name for s in val], "calibration_images":
           [s.name for s in calib], "megapixels": round(mp, 3), "quality": quality,
           "int8_vs_fp32_glands": agree, "speed_1_thread": speed,
           "network_speedup": round(speed["fp32"]["network_s_per_mp"]
                                    / speed["int8"]["network_s_per_mp"], 2),
           "pipeline_speedup": round(speed["fp32"]["pipeline_s_per_mp"]
                                     / speed["int8"]["pipeline_s_per_mp"], 2),
           "int8_refused_on_this_cpu": refused,
           "delta": {k: round(quality["int8"][k] - quality["fp32"][k], 4)
                     for k in ("f1", "object_dice", "object_hausdorff")}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(report(res))
    print(report(res))


def report(r: dict) -> str:
    q, d = r["quality"], r["delta"]
    lines = ["# int8 vs fp32 ONNX graph of `glas-unet` (validation patients)", "",
             f"Machine: {r['machine']}; `benchmarks/bench_int8.py` {r['args']}", ""]
    if r.get("int8_refused_on_this_cpu"):
        lines += ["**This CPU has no int8 dot-product instructions: glandseg refuses "
                  "`--precision int8` here** (measured with `--any-cpu` to show why: "
                  f"{r['int8_refused_on_this_cpu']}).", ""]
    lines += [f"{len(r['validation_images'])} validation-patient images ({r['megapixels']} MP; "
              f"never seen in training, nor in calibration: {len(r['calibration_images'])} "
              "training-patient images).", "",
              "| graph | F1 (pooled) | object Dice (pooled) | object Hausdorff (pooled) | "
              "F1 (per-image mean) | network, 1 thread, s/MP | whole pipeline, 1 thread, s/MP |",
              "|---|---|---|---|---|---|---|"]
    for p in ("fp32", "int8"):
        s = r["speed_1_thread"][p]
        lines.append(f"| {p} | {q[p]['f1']} | {q[p]['object_dice']} | "
                     f"{q[p]['object_hausdorff']} | {q[p]['per_image_mean_f1']} | "
                     f"{s['network_s_per_mp']} | {s['pipeline_s_per_mp']} |")
    a = r["int8_vs_fp32_glands"]
    lines += ["", f"int8 - fp32: F1 {d['f1']:+}, object Dice {d['object_dice']:+}, object "
              f"Hausdorff {d['object_hausdorff']:+}. Speed-up: network {r['network_speedup']}x, "
              f"whole pipeline {r['pipeline_speedup']}x. int8's glands scored against fp32's: "
              f"F1 {a['f1']}, object Dice {a['object_dice']} (not the same glands)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
