"""Robustness of a model to scale, stain and acquisition shifts (official GlaS metrics).

Shifted copies are made here, in memory, from GlaS images (nothing is written but results):

- ``scale2x``: 2x bicubic upscale (a 40x scan of a 20x image), predicted with the input's
  resolution given (``mpp = 0.62005 / 2``: rescaled to the model's), truth upscaled by
  nearest neighbour and scored at the input's resolution; ``scale2x_nompp``: the same
  image without the resolution (what glandseg did before ``--input-mpp``);
- ``stainH``/``stainE``: HED-space stain shift (:func:`skimage.color.rgb2hed`):
  haematoxylin x1.2 and eosin x0.8, or haematoxylin x0.8 and eosin x1.2;
- ``jpeg60``: JPEG quality 60; ``blur``: Gaussian blur, sigma 1.5 px; ``blur_jpeg60``: both
  (blur, then JPEG 60).

Each shift is predicted without stain normalisation and with ``--stain-norm macenko`` and
``reinhard``. Scores: pooled F1 and object Dice (object Hausdorff too, in pixels of the
image scored, so twice as large for 2x copies), ground-truth regions split.

Images: ``--part val`` (default) the 18 validation images of the patient split the bundled
models use (``patient_split(train, 0.2, seed 0)``: patients never trained on); ``--part
test``: the 80 Test A/B images, by default clean and ``scale2x`` only (``--shifts`` for
others), run once per bundled model as a reported figure (never used to choose anything).
``--deblur auto`` (default, as ``glandseg predict``) or ``off``.

    .venv/bin/python benchmarks/bench_robustness.py [--part val|test] [--model glas-unet]

Results: ``benchmarks/results/robustness_<part>_<model>[_nodeblur].json`` (one entry per
variant, written as each finishes; a re-run reuses finished variants of the same model
weights, post-processing and deblur setting unless ``--fresh``, and keeps those outside its
plan; ``--redo SHIFT`` recomputes some) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine  # noqa: E402

from glandseg.data.dataset import patient_split  # noqa: E402
from glandseg.data.discover import discover  # noqa: E402
from glandseg.data.io import read_image, read_label, write_text  # noqa: E402
from glandseg.models.config import GLAS_MPP  # noqa: E402

SHIFTS = ("clean", "scale2x", "scale2x_nompp", "stainH", "stainE", "jpeg60", "blur",
          "blur_jpeg60")
NORMS = (None, "macenko", "reinhard")
#: Shifts measured with stain normalisation too (scale is independent of colour).
NORMED_SHIFTS = ("clean", "stainH", "stainE", "jpeg60", "blur")
TEST_SHIFTS = ("clean", "scale2x")


def hed_shift(image: np.ndarray, h: float, e: float) -> np.ndarray:
    """Scale the haematoxylin and eosin channels of ``uint8 (H, W, 3)`` in HED space."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image)
    hed[..., 0] *= h
    hed[..., 1] *= e
    return (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int = 60) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB")).copy()


def blur(image: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    from skimage.filters import gaussian

    out = gaussian(image, sigma=sigma, channel_axis=-1, preserve_range=True)
    return (out + 0.5).clip(0, 255).astype(np.uint8)


def upscale2x(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((2 * w, 2 * h), Image.BICUBIC)).copy()


def shifted(shift: str, image: np.ndarray, truth: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """``(image, truth, mpp given to the predictor)`` of one shift."""
    if shift == "clean":
        return image, truth, None
    if shift in ("scale2x", "scale2x_nompp"):
        big_truth = np.repeat(np.repeat(truth, 2, axis=0), 2, axis=1)
        return upscale2x(image), big_truth, (GLAS_MPP / 2 if shift == "scale2x" else None)
    if shift == "stainH":
        return hed_shift(image, 1.2, 0.8), truth, None
    if shift == "stainE":
        return hed_shift(image, 0.8, 1.2), truth, None
    if shift == "jpeg60":
        return jpeg(image, 60), truth, None
    if shift == "blur":
        return blur(image, 1.5), truth, None
    if shift == "blur_jpeg60":  # a blurred scan exported as JPEG: sharpening meets artefacts
        return jpeg(blur(image, 1.5), 60), truth, None
    raise ValueError(shift)


def samples_of(data: str, part: str, limit: int | None) -> list:
    if part == "val":
        _, val = patient_split(discover(data, splits=("train",)), 0.2, 0)
        out = [s for s in val if s.anno is not None]
    else:
        out = [s for s in discover(data, splits=("testA", "testB")) if s.anno is not None]
    return out[:limit] if limit else out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_variant(pred, samples: list, shift: str, norm: str | None) -> dict:
    from glandseg.metrics.score import score_pairs

    pred.stain_norm = norm
    items, t0 = [], time.perf_counter()
    for s in samples:
        image, truth, mpp = shifted(shift, read_image(s.image),
                                    read_label(s.anno, what="annotation"))
        labels = pred.predict(image, mpp=mpp)
        assert labels.shape == truth.shape, (s.name, labels.shape, truth.shape)
        items.append((s.name, labels, truth))
    seconds = time.perf_counter() - t0
    summary = score_pairs(items, split_gt=True)
    out = {"shift": shift, "stain_norm": norm, "seconds": round(seconds, 1)}
    for p, m in summary.items():
        out[p] = {k: m["pooled"][k] for k in ("f1", "object_dice", "object_hausdorff",
                                               "tp", "fp", "fn")}
        out[p]["n_images"] = m["n_images"]
    return out


def table(results: list[dict], parts: list[str]) -> str:
    clean = {(r["stain_norm"], p): r[p] for r in results if r["shift"] == "clean"
             for p in parts if p in r}
    base = {p: clean.get((None, p)) for p in parts}
    head = "| shift | stain norm |"
    for p in parts:
        head += f" F1 {p} | Δ F1 | Obj Dice {p} | Δ Dice |"
    lines = [head, "|" + "---|" * (2 + 4 * len(parts))]
    for r in results:
        row = f"| {r['shift']} | {r['stain_norm'] or 'none'} |"
        for p in parts:
            m, b = r.get(p), base.get(p)
            if m is None:
                row += " | | | |"
                continue
            df = m["f1"] - b["f1"] if b else float("nan")
            dd = m["object_dice"] - b["object_dice"] if b else float("nan")
            row += f" {m['f1']:.3f} | {df:+.3f} | {m['object_dice']:.3f} | {dd:+.3f} |"
        lines.append(row)
    return "\n".join(lines)


def _post(task: str, params: dict | None) -> dict | None:
    """A recorded post-processing dict with the defaults of newer parameters filled in."""
    from glandseg import GlandsegError
    from glandseg.models.config import postprocess_params

    try:
        return postprocess_params(task, params).as_dict() if params else None
    except GlandsegError:  # an old record that no longer validates: not the same
        return None


def _order(r: dict) -> tuple[int, int]:
    """Table order of a result: shift as in :data:`SHIFTS`, then no norm, then NORMS."""
    norms = [None, *NORMS[1:]]
    return (SHIFTS.index(r["shift"]) if r["shift"] in SHIFTS else len(SHIFTS),
            norms.index(r["stain_norm"]) if r["stain_norm"] in norms else len(norms))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("GLANDSEG_GLAS",
                                                     str(ROOT.parent / "shared" / "glas")))
    ap.add_argument("--part", choices=("val", "test"), default="val")
    ap.add_argument("--model", default="glas-unet")
    ap.add_argument("--shifts", nargs="+", default=None, choices=SHIFTS)
    ap.add_argument("--norms", nargs="+", default=None, choices=("none", *NORMS[1:]))
    ap.add_argument("--limit", type=int, default=None, help="first N images only (a check)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                    help="where the model runs (figures quoted in the README: cpu)")
    ap.add_argument("--deblur", choices=("auto", "off"), default="auto",
                    help="the predictor's --deblur (default: auto, as glandseg predict; the "
                         "figures of v3 and earlier were measured before it existed, i.e. off)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fresh", action="store_true", help="ignore earlier results")
    ap.add_argument("--redo", nargs="+", default=(), choices=SHIFTS,
                    help="recompute these shifts even if earlier results have them")
    args = ap.parse_args()

    from glandseg.infer.predictor import Predictor
    from glandseg.models.store import resolve_config

    cfg, weights = resolve_config(args.model)
    wsha = sha256(weights) if weights else None
    samples = samples_of(args.data, args.part, args.limit)
    name = Path(args.model).name.replace(".safetensors", "")
    suffix = f"_limit{args.limit}" if args.limit else ""
    suffix += "_nodeblur" if args.deblur == "off" else ""
    out = Path(args.out or ROOT / "benchmarks" / "results" /
               f"robustness_{args.part}_{name}{suffix}.json")
    shifts = args.shifts or (SHIFTS if args.part == "val" else TEST_SHIFTS)
    norms = ([None if n == "none" else n for n in args.norms] if args.norms
             else list(NORMS) if args.part == "val" else [None])
    plan = [(s, n) for s in shifts for n in norms if n is None or s in NORMED_SHIFTS]

    old = json.loads(out.read_text()) if out.is_file() and not args.fresh else {}
    same = (old.get("weights_sha256") == wsha and old.get("deblur", "off") == args.deblur
            and _post(cfg.task, old.get("postprocess")) == cfg.postprocess.as_dict())
    done = {(r["shift"], r["stain_norm"]): r for r in old.get("results", [])} if same else {}
    pred = Predictor.from_name(args.model, device=args.device,
                               deblur=None if args.deblur == "off" else "auto")
    record = {"model": args.model, "weights_sha256": wsha, "config": cfg.to_dict()["preprocess"],
              "tiling": cfg.tiling.as_dict(), "postprocess": cfg.postprocess.as_dict(),
              "deblur": args.deblur, "part": args.part, "images": [s.name for s in samples],
              "metric": "official GlaS, pooled, ground-truth regions split",
              "machine": machine(), "device": str(pred.device), "results": []}
    parts = ["other"] if args.part == "val" else ["testA", "testB"]
    # earlier results (same weights, post-processing, deblur) outside this plan are kept
    kept = [r for key, r in done.items() if key not in set(plan)]
    for shift, norm in plan:
        if (shift, norm) in done and shift not in args.redo:
            r = done[(shift, norm)]
        else:
            r = run_variant(pred, samples, shift, norm)
            print(json.dumps(r), flush=True)
        record["results"].append(r)
        write_text(out, json.dumps({**record, "results": sorted(record["results"] + kept,
                                                                key=_order)}, indent=1) + "\n")
    record["results"] = sorted(record["results"] + kept, key=_order)
    print(f"\n{args.model} on {len(samples)} {args.part} image(s) → {out}\n")
    print(table(record["results"], parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
