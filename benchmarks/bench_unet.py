"""Benchmark the U-Nets and Mask R-CNN on CPU: training speed, inference time, and memory on
large images.

Models (``--models``, default ``unet,unet-lite0,maskrcnn-lite0``; ``--with-resnet50`` adds the
study's ``maskrcnn``): ``unet`` at ``--width`` (default 32 on CPU), untrained, or the trained
run given per model by ``--model-path NAME=RUN``. Each measurement runs in a fresh subprocess:

(a) Training: images/s of forward + backward + AdamW step with the model's own task
    (:func:`glandseg.train.loop.make_task`: ``DenseTask`` targets/loss for the U-Nets,
    ``InstanceTask`` target_fn/collate/loss for Mask R-CNN) on GlaS training crops at the
    model's working scale (synthetic H&E-like crops without ``--glas``): a batch of 4 crops
    of 256x256 for the U-Nets, 2 crops of 256x256 for Mask R-CNN (``--instance-batch``,
    ``--instance-crop``), and the peak RSS of that process.
(b) Inference: seconds per megapixel of ``Predictor.predict`` on a GlaS-sized image
    (775x522; ``testA_1`` from ``--glas`` when present, else a synthetic H&E-like image),
    split into the network part and post-processing, whose share is reported: for the
    U-Nets ``predict_proba`` vs ``postprocess``, for Mask R-CNN
    :func:`~glandseg.infer.instances.detect_groups` (forward, stitching, resampling) vs
    :func:`~glandseg.infer.instances.groups_to_labels`.
(c) Memory: peak RSS of predicting a 4096x4096 image against a 1024x1024 one (16x the
    pixels). Both the raw peak ratio and the ratio of the growth over the process's RSS
    once the model is loaded (imports and weights excluded) are reported: the Predictor
    tiles, so only the probability canvas and post-processing grow with the image.

Training and inference tables have a "vs unet-lite0" column: the model's time (per image,
per megapixel) over ``unet-lite0``'s in the same run.

Results are printed with the machine (CPU model, cores, RAM, load) and written to
``benchmarks/README_unet.md``. Run (``--quick``: tiny sizes and width 4, a smoke test)::

    nice -n 19 .venv/bin/python benchmarks/bench_unet.py [--models unet,unet-lite0,maskrcnn-lite0]
        [--with-resnet50] [--model-path NAME=RUN ...] [--width 32] [--glas DIR] [--quick]

``--model-path RUN`` without ``NAME=`` (the old form) benchmarks only that run unless
``--models`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_GLAS = HERE.parent.parent / "shared" / "glas"
README = HERE / "README_unet.md"
GLAS_HW = (522, 775)

DEFAULT_MODELS = ("unet", "unet-lite0", "maskrcnn-lite0")
REFERENCE = "unet-lite0"  # the "vs unet-lite0" ratio columns

FULL = {"batch": 4, "crop": 256, "inst_batch": 2, "inst_crop": 256, "train_steps": 5,
        "infer_repeats": 3, "mem_small": 1024, "mem_large": 4096, "tile": None,
        "inst_tile": None, "max_dets": None}
# quick: instance models get bigger tiles (few windows) and at most 32 detections per
# window, so untrained junk detections do not make stitching the bottleneck of a smoke test
QUICK = {"batch": 2, "crop": 64, "inst_batch": 2, "inst_crop": 96, "train_steps": 2,
         "infer_repeats": 1, "mem_small": 256, "mem_large": 1024, "tile": 128,
         "inst_tile": 320, "max_dets": 32}


# --- process helpers ---------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return round(kib / 1024, 1) if kib is not None else float("nan")


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = r // 1024 if sys.platform == "darwin" else r
    return round(kib / 1024, 1)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak measures the work only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- work done in the child processes -------------------------------------------------

def _load(spec: dict):
    """``(model, config)`` for a child: a trained run or an untrained architecture."""
    from glandseg.models import registry
    from glandseg.train.checkpoint import load_weights, resolve_model

    if spec.get("model_path"):
        cfg, weights = resolve_model(spec["model_path"])
    else:
        cfg, weights = registry.default_config(spec["model"]), None
        if spec["model"] == "unet":
            cfg["model_args"]["width"] = spec["width"]
    if cfg.get("task") == "instances" and spec.get("max_dets"):
        cfg.setdefault("model_args", {})["box_detections_per_img"] = spec["max_dets"]
    model = registry.build_model(cfg, pretrained=False)
    if weights is not None:
        load_weights(model, weights)
    return model.eval(), cfg


def synthetic_he(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A pink H&E-like image with darker round 'glands' and its label image."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[...] = (225, 165, 200)
    lab = np.zeros((h, w), np.int32)
    n = max(2, h * w // 40_000)
    yy, xx = np.ogrid[:h, :w]
    for k in range(n):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(max(4, min(h, w) // 30), max(6, min(h, w) // 10))
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        lab[m] = k + 1
        img[m] *= 0.6
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def _train_crops(glas: str | None, scale: float, crop: int, n: int) -> tuple[list, str]:
    """``n`` crops ``(image uint8 (3, c, c), labels int64 (c, c))`` of GlaS training images
    (``train_1``, ``train_2``, ...) rescaled by ``scale`` as the Trainer's dataset does,
    centred; synthetic H&E-like crops when GlaS is absent or its images are too small."""
    import torch

    crops = []
    if glas:
        from glandseg.data.io import read_image, read_label
        from glandseg.data.transforms import scale_pair

        k = 0
        while len(crops) < n and k < 4 * n + 10:
            k += 1
            img_p = next((p for p in sorted(Path(glas).glob(f"train_{k}.*"))), None)
            ann_p = next((p for p in sorted(Path(glas).glob(f"train_{k}_anno.*"))), None)
            if img_p is None or ann_p is None:
                continue
            img = torch.from_numpy(read_image(img_p)).permute(2, 0, 1).contiguous()
            lab = torch.from_numpy(read_label(ann_p).astype(np.int64))
            img, lab = scale_pair(img, lab[None], scale)
            h, w = lab.shape[-2:]
            if h < crop or w < crop:
                continue
            y, x = (h - crop) // 2, (w - crop) // 2
            crops.append((img[:, y:y + crop, x:x + crop], lab[0, y:y + crop, x:x + crop]))
        if len(crops) == n:
            return crops, f"GlaS train crops at scale {scale:g}"
    crops = []
    for i in range(n):
        img, lab = synthetic_he(crop, crop, seed=i)
        crops.append((torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(lab.astype(np.int64))))
    return crops, "synthetic crops"


def child_train(spec: dict) -> dict:
    import torch

    from glandseg.train.loop import make_task

    torch.manual_seed(0)
    model, cfg = _load(spec)
    model.train()
    task = make_task(cfg)
    b, c = spec["batch"], spec["crop"]
    crops, source = _train_crops(spec.get("glas"), float(cfg["preprocess"]["scale"]), c, b)
    items = []
    for img, lab in crops:
        item = {"image": img.float() / 255.0, "labels": lab}
        item.update(task.target_fn(lab))
        items.append(item)
    batch = task.collate(items)
    pre = cfg["preprocess"]
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = task.loss(model, batch, mean, std)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = rss_mib()
    reset_peak_rss()
    step()  # warm-up (allocator, oneDNN kernels)
    t = time.perf_counter()
    for _ in range(spec["train_steps"]):
        step()
    dt = time.perf_counter() - t
    return {"images_per_s": b * spec["train_steps"] / dt, "s_per_step": dt / spec["train_steps"],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "crops": source,
            "scale": float(cfg["preprocess"]["scale"]),
            "base_rss_mib": base, "peak_rss_mib": peak_rss_mib()}


def _glas_image(glas: str | None) -> np.ndarray | None:
    if not glas:
        return None
    from glandseg.data.io import read_image

    for p in sorted(Path(glas).glob("testA_1.*")):
        if "_anno" not in p.stem:
            return read_image(p)
    return None


def child_infer(spec: dict) -> dict:
    import torch

    from glandseg.infer.predictor import Predictor

    torch.manual_seed(0)
    model, cfg = _load(spec)
    pred = Predictor(model, cfg, "cpu")
    image = _glas_image(spec.get("glas"))
    source = "GlaS testA_1"
    if image is None:
        image, _ = synthetic_he(*GLAS_HW)
        source = "synthetic"
    if pred.task == "instances":
        from glandseg.infer.instances import DEFAULTS, detect_groups, groups_to_labels

        params = {**DEFAULTS, **cfg.get("postprocess", {})}

        def network():
            return detect_groups(pred, image, min_score=params["score_threshold"])

        def postprocess(groups):
            return groups_to_labels(groups, image.shape[:2], **params)
    else:
        network, postprocess = (lambda: pred.predict_proba(image)), pred.postprocess
    pred.predict(image)  # warm-up
    net, post = [], []
    for _ in range(spec["infer_repeats"]):
        t = time.perf_counter()
        out = network()
        t1 = time.perf_counter()
        labels = postprocess(out)
        t2 = time.perf_counter()
        net.append(t1 - t)
        post.append(t2 - t1)
    mp = image.shape[0] * image.shape[1] / 1e6
    n, p = statistics.median(net), statistics.median(post)
    dets = sum(len(g) for g in out) if pred.task == "instances" else None
    return {"image": f"{source} {image.shape[1]}x{image.shape[0]}", "scale": pred.scale,
            "s_per_mp": (n + p) / mp, "net_s": n, "post_s": p, "post_share": p / (n + p),
            "glands": int(labels.max()), "detections": dets, "peak_rss_mib": peak_rss_mib()}


def child_mem(spec: dict) -> dict:
    import torch

    from glandseg.infer.predictor import Predictor, TileConfig

    torch.manual_seed(0)
    model, cfg = _load(spec)
    pred = Predictor(model, cfg, "cpu")
    tile = spec.get("inst_tile") if pred.task == "instances" else spec.get("tile")
    if tile:
        pred.tiling = TileConfig(tile=tile, overlap=tile // 8, batch_size=pred.tiling.batch_size)
    side = spec["side"]
    small, _ = synthetic_he(512, 512)
    pred.predict(small[:64, :64])  # load kernels before the baseline
    image = np.tile(small, (side // 512 + 1, side // 512 + 1, 1))[:side, :side].copy()
    base = rss_mib()
    reset_peak_rss()
    t = time.perf_counter()
    labels = pred.predict(image)
    dt = time.perf_counter() - t
    return {"side": side, "base_rss_mib": base, "peak_rss_mib": peak_rss_mib(),
            "seconds": dt, "glands": int(labels.max()), "tile": pred.tiling.tile}


CHILDREN = {"train": child_train, "infer": child_infer, "mem": child_mem}


def run_child(spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"child {spec['kind']} {spec.get('model')} failed:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- driver -------------------------------------------------------------------------

def parse_model_paths(values: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--model-path`` values → ``({model name: run}, [models given as a bare RUN])``.

    ``NAME=RUN`` must name the architecture that the run's config was trained as; a bare
    ``RUN`` (the old form) takes its name from the config."""
    from glandseg import GlandsegError
    from glandseg.train.checkpoint import resolve_model

    paths: dict[str, str] = {}
    bare: list[str] = []
    for v in values:
        name, sep, run = v.partition("=")
        if not sep:
            name, run = None, v
        cfg, weights = resolve_model(run)
        if weights is None:
            raise GlandsegError(f"--model-path {v}: {run} has no trained weights")
        if name is None:
            name = cfg["model"]
            bare.append(name)
        elif cfg["model"] != name:
            raise GlandsegError(f"--model-path {v}: {run} is a {cfg['model']}, not a {name}")
        if name in paths:
            raise GlandsegError(f"--model-path: two runs for {name}")
        paths[name] = run
    return paths, bare


def model_list(args: argparse.Namespace) -> list[dict]:
    from glandseg import GlandsegError
    from glandseg.models import registry

    paths, bare = parse_model_paths(args.model_path)
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    elif bare:  # old form: only the given run(s)
        names = list(dict.fromkeys([*bare, *paths]))
    else:
        names = list(DEFAULT_MODELS)
    if args.with_resnet50 and "maskrcnn" not in names:
        names.append("maskrcnn")
    for n in names:
        registry.default_config(n)  # raises on an unknown name
    for n in paths:
        if n not in names:
            raise GlandsegError(f"--model-path {n}=...: {n} is not among the models "
                                f"({', '.join(names)})")
    out = []
    for n in names:
        run = paths.get(n)
        label = f"unet (width {args.width})" if n == "unet" and not run else n
        out.append({"label": label, "model": n, "width": args.width if n == "unet" else None,
                    "model_path": run, "weights": Path(run).name if run else "untrained",
                    "instances": registry.default_config(n)["task"] == "instances"})
    return out


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ratio(value: float, ref: float | None) -> str:
    return f"{value / ref:.2f}" if ref else "—"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None,
                    help=f"comma list of architectures (default {','.join(DEFAULT_MODELS)})")
    ap.add_argument("--with-resnet50", action="store_true",
                    help="also benchmark the study's maskrcnn (ResNet-50-FPN, scale 1.0; slow)")
    ap.add_argument("--width", type=int, default=None,
                    help="plain U-Net width (default 32; 4 with --quick)")
    ap.add_argument("--model-path", action="append", default=[], metavar="NAME=RUN",
                    help="benchmark the trained run RUN (folder or .safetensors) for model "
                         "NAME instead of its untrained architecture; repeatable. A bare RUN "
                         "benchmarks only that run (unless --models is given)")
    ap.add_argument("--instance-batch", type=int, default=None,
                    help="Mask R-CNN training batch (default 2)")
    ap.add_argument("--instance-crop", type=int, default=None,
                    help="Mask R-CNN training crop side at the working scale (default 256)")
    ap.add_argument("--max-detections", type=int, default=None,
                    help="Mask R-CNN box_detections_per_img override (default: the config's, "
                         "256; 32 with --quick); bounds stitching time of untrained weights")
    ap.add_argument("--glas", default=str(DEFAULT_GLAS),
                    help="GlaS folder (train crops, the 775x522 testA_1 image)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not numbers")
    ap.add_argument("--readme", default=str(README), help="where to write the results (markdown)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        logging.disable(logging.WARNING)
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0

    settings = dict(QUICK if args.quick else FULL)
    if args.instance_batch:
        settings["inst_batch"] = args.instance_batch
    if args.instance_crop:
        settings["inst_crop"] = args.instance_crop
    if args.max_detections:
        settings["max_dets"] = args.max_detections
    if args.width is None:
        args.width = 4 if args.quick else 32
    glas = args.glas if Path(args.glas).is_dir() else None
    from glandseg import GlandsegError

    try:
        models = model_list(args)
    except GlandsegError as exc:
        ap.error(str(exc))
    mach = machine()
    mode = "quick (smoke test: tiny sizes, numbers not meaningful)" if args.quick else "full"
    print(f"machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram_gib']} GiB RAM, "
          f"load {mach['load_1min']}, torch {mach['torch']} ({mach['torch_threads']} threads)")
    print(f"mode: {mode}; models: {', '.join(m['label'] + ' [' + m['weights'] + ']' for m in models)}")

    res: dict[str, dict] = {}
    for m in models:
        base = {"model": m["model"], "width": m["width"], "model_path": m["model_path"],
                **settings, "glas": glas}
        if m["instances"]:
            base.update(batch=settings["inst_batch"], crop=settings["inst_crop"])
        else:
            base["max_dets"] = None
        r = res[m["model"]] = {"batch": base["batch"], "crop": base["crop"]}
        t = r["train"] = run_child({**base, "kind": "train"})
        print(f"[train] {m['label']}: {t['images_per_s']:.2f} img/s (batch {base['batch']}x"
              f"{base['crop']}²), peak RSS {t['peak_rss_mib']:.0f} MiB", flush=True)
        i = r["infer"] = run_child({**base, "kind": "infer"})
        print(f"[infer] {m['label']}: {i['s_per_mp']:.2f} s/MP, post-processing "
              f"{100 * i['post_share']:.0f} %", flush=True)
        small = r["small"] = run_child({**base, "kind": "mem", "side": settings["mem_small"]})
        large = r["large"] = run_child({**base, "kind": "mem", "side": settings["mem_large"]})
        g_small = max(small["peak_rss_mib"] - small["base_rss_mib"], 1e-3)
        g_large = large["peak_rss_mib"] - large["base_rss_mib"]
        print(f"[memory] {m['label']}: peak {small['peak_rss_mib']:.0f} → "
              f"{large['peak_rss_mib']:.0f} MiB (×{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}"
              f"; growth over loaded model ×{g_large / g_small:.1f}) for ×"
              f"{(large['side'] / small['side']) ** 2:.0f} pixels", flush=True)

    ref = res.get(REFERENCE)
    ref_img_s = 1 / ref["train"]["images_per_s"] if ref else None
    ref_mp = ref["infer"]["s_per_mp"] if ref else None
    train_rows, infer_rows, mem_rows = [], [], []
    for m in models:
        r = res[m["model"]]
        t, i, small, large = r["train"], r["infer"], r["small"], r["large"]
        train_rows.append([m["label"], m["weights"], f"{t['params_m']:.2f}",
                           f"{r['batch']}×{r['crop']}² @ {t['scale']:g}",
                           f"{t['images_per_s']:.2f}", _ratio(1 / t["images_per_s"], ref_img_s),
                           f"{t['s_per_step']:.2f}", f"{t['peak_rss_mib']:.0f}"])
        objects = str(i["glands"])
        if i.get("detections") is not None:
            objects += f" (from {i['detections']} detections)"
        infer_rows.append([m["label"], m["weights"], i["image"], f"{i['scale']:g}",
                           f"{i['s_per_mp']:.2f}", _ratio(i["s_per_mp"], ref_mp),
                           f"{i['net_s']:.2f}", f"{i['post_s']:.3f}",
                           f"{100 * i['post_share']:.0f} %", objects])
        g_small = max(small["peak_rss_mib"] - small["base_rss_mib"], 1e-3)
        g_large = large["peak_rss_mib"] - large["base_rss_mib"]
        mem_rows.append([m["label"], m["weights"], f"{small['side']}² / {large['side']}²",
                         f"{small['tile']}",
                         f"{small['peak_rss_mib']:.0f} / {large['peak_rss_mib']:.0f}",
                         f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}",
                         f"{g_small:.0f} / {g_large:.0f}", f"{g_large / g_small:.1f}",
                         f"{small['seconds']:.1f} / {large['seconds']:.1f}",
                         f"{small['glands']} / {large['glands']}"])

    vs = f"vs {REFERENCE} (time ratio)"
    tables = [
        "### Training (forward + backward + AdamW step, one process per model)\n\n" + fmt_table(
            ["model", "weights", "params (M)", "batch (crops @ scale)", "images/s", vs,
             "s/step", "peak RSS (MiB)"], train_rows),
        "### Inference (Predictor.predict, median of repeats)\n\n" + fmt_table(
            ["model", "weights", "image", "scale", "s / megapixel", vs, "network (s)",
             "post-processing (s)", "post share", "glands"], infer_rows),
        "### Memory of large images (one process per size)\n\n" + fmt_table(
            ["model", "weights", "sizes", "tile", "peak RSS (MiB)", "peak ratio",
             "growth over loaded model (MiB)", "growth ratio", "seconds", "glands"], mem_rows),
    ]
    print()
    print("\n\n".join(tables))
    write_readme(Path(args.readme), mach, mode, settings, args, glas, models, tables)
    print(f"\nwritten to {args.readme}")
    return 0


def write_readme(path: Path, mach: dict, mode: str, settings: dict, args, glas, models,
                 tables) -> None:
    from glandseg.data.io import write_text

    cmd = "nice -n 19 .venv/bin/python benchmarks/bench_unet.py" + (" --quick" if args.quick else "")
    if args.models:
        cmd += f" --models {args.models}"
    if args.with_resnet50:
        cmd += " --with-resnet50"
    for v in args.model_path:
        cmd += f" --model-path {v}"
    if args.instance_batch:
        cmd += f" --instance-batch {args.instance_batch}"
    if args.instance_crop:
        cmd += f" --instance-crop {args.instance_crop}"
    if args.max_detections:
        cmd += f" --max-detections {args.max_detections}"
    names = {m["model"] for m in models}
    untrained = [m["label"] for m in models if m["weights"] == "untrained"]
    inst = [m for m in models if m["instances"]]
    inst_untrained = [m["label"] for m in inst if m["weights"] == "untrained"]
    dets = (f" At most {settings['max_dets']} detections per window (`--max-detections` or "
            "quick mode; the config's `box_detections_per_img` otherwise)."
            if settings["max_dets"] and inst else "")
    inst_note = ""
    if inst:
        inst_note = f"""
- **Mask R-CNN** ({', '.join(m['label'] for m in inst)}): training is `InstanceTask`
  (target_fn: boxes/masks of the crop's glands, collate, sum of torchvision's losses) on a
  batch of {settings['inst_batch']} crops of {settings['inst_crop']}² at the model's scale
  (the U-Nets: {settings['batch']}); images/s are per crop, so compare them per image, as the
  ratio column does. Inference splits `detect_groups` (forward on the windows, stitching,
  resampling of the masks to the input resolution) from `groups_to_labels` (thresholds,
  overlaps, `min_area`, relabelling). Memory tiles at
  {str(settings['inst_tile']) + ' px' if settings['inst_tile'] else "the config's tile (512 px for maskrcnn-lite0, 800 for maskrcnn)"}.{dets}"""
    if inst_untrained:
        inst_note += f"""
  **Untrained** Mask R-CNN ({', '.join(inst_untrained)}) gives up to 256 junk detections
  per window, so its post-processing, stitching and large-image memory/time are indicative
  only: they depend on how many objects the network outputs, not on the architecture."""
    text = f"""# U-Net and Mask R-CNN benchmark (CPU)

Produced by `benchmarks/bench_unet.py` ({time.strftime('%Y-%m-%d %H:%M %Z')}), mode: **{mode}**.

Command: `{cmd}`

Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram_gib']} GiB RAM; 1-min load
{mach['load_1min']} when started; Python {mach['python']}, torch {mach['torch']}
({mach['torch_threads']} threads).

What is measured (each row in its own subprocess, so imports and caches do not leak between
measurements; peak RSS is the kernel's `VmHWM`, reset after set-up where the kernel allows):

- **Training**: forward + backward + AdamW step of the model's own loss (binary BCE with
  Ronneberger weights for `unet`, weighted CE + soft Dice for `unet-lite0`, torchvision's
  losses for Mask R-CNN) on {'GlaS training crops (`train_1`, `train_2`, ...)' if glas else
  'synthetic H&E-like crops (GlaS not found)'} at the model's working scale: U-Nets a batch of
  {settings['batch']} crops of {settings['crop']}×{settings['crop']}; one warm-up step, then
  {settings['train_steps']} timed steps. Peak RSS of that process.
- **Inference**: `Predictor.predict` on a 775×522 image ({'GlaS testA_1' if glas else
  'synthetic, GlaS not found'}) at the model config's working scale; time per megapixel of
  input, split into the network (U-Nets: `predict_proba`: resize, tiles, forward, blend,
  upsample) and post-processing (thresholds, watershed, hole filling).{' Untrained weights (' + ', '.join(untrained) + ') make post-processing times only indicative: they depend on how many objects the outputs contain.' if untrained else ''}
- **Memory**: peak RSS of predicting a {settings['mem_large']}² image vs a
  {settings['mem_small']}² one (×{(settings['mem_large'] // settings['mem_small']) ** 2} pixels).
  *Peak ratio* includes the interpreter, torch and the weights; *growth ratio* is the increase
  over the RSS once the model is loaded, i.e. what the image itself costs. The Predictor tiles
  at the working scale (tile column), so the network's activations are bounded; what grows is
  the image, the probability canvas (U-Nets) or the instance masks at full size, and
  post-processing.{inst_note}
- **vs {REFERENCE}**: the model's time per training image or per inference megapixel over
  {REFERENCE}'s in the same run{'' if REFERENCE in names else ' (— : not benchmarked)'}.

{chr(10).join(t + chr(10) for t in tables)}
Plain U-Net width: {args.width} (the study's is 64; width 32 has 1/4 of the parameters and
compute). Numbers on a loaded machine (see load above) are lower bounds on speed.
"""
    write_text(path, text)


if __name__ == "__main__":
    sys.exit(main())
