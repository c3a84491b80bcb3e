"""Benchmark the U-Nets on CPU: training speed, inference time, and memory on large images.

For each model (``unet`` at ``--width``, default 32 on CPU, and ``unet-lite0``; or the
trained run given by ``--model-path``), each measurement in a fresh subprocess:

(a) Training: images/s of forward + backward + AdamW step on a batch of 4 crops of
    256x256 (the model's own loss and targets from :mod:`glandseg.train.tasks`), and the
    peak RSS of that process.
(b) Inference: seconds per megapixel of ``Predictor.predict`` on a GlaS-sized image
    (775x522; ``testA_1`` from ``--glas`` when present, else a synthetic H&E-like image),
    split into the network part (``predict_proba``) and post-processing, whose share is
    reported.
(c) Memory: peak RSS of predicting a 4096x4096 image against a 1024x1024 one (16x the
    pixels). Both the raw peak ratio and the ratio of the growth over the process's RSS
    once the model is loaded (imports and weights excluded) are reported: the Predictor
    tiles, so only the probability canvas and post-processing grow with the image.

Results are printed with the machine (CPU model, cores, RAM, load) and written to
``benchmarks/README_unet.md``. Run (``--quick``: tiny sizes and width 4, a smoke test)::

    nice -n 19 .venv/bin/python benchmarks/bench_unet.py [--width 32] [--model-path RUN]
        [--glas DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_GLAS = HERE.parent.parent / "shared" / "glas"
README = HERE / "README_unet.md"
GLAS_HW = (522, 775)

FULL = {"batch": 4, "crop": 256, "train_steps": 5, "infer_repeats": 3,
        "mem_small": 1024, "mem_large": 4096, "tile": None}
QUICK = {"batch": 2, "crop": 64, "train_steps": 2, "infer_repeats": 1,
         "mem_small": 256, "mem_large": 1024, "tile": 128}


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


def machine() -> dict:
    """CPU model, cores, RAM, load and library versions of this machine."""
    import psutil
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


# --- work done in the child processes -------------------------------------------------

def _load(spec: dict):
    """``(model, config)`` for a child: a trained run or an untrained architecture."""
    from glandseg.models import registry
    from glandseg.train.checkpoint import load_model

    if spec.get("model_path"):
        return load_model(spec["model_path"], "cpu")
    cfg = registry.default_config(spec["model"])
    if spec["model"] == "unet":
        cfg["model_args"]["width"] = spec["width"]
    model = registry.build_model(cfg, pretrained=False)
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


def child_train(spec: dict) -> dict:
    import torch

    from glandseg.train.loop import make_task

    torch.manual_seed(0)
    model, cfg = _load(spec)
    model.train()
    task = make_task(cfg)
    b, c = spec["batch"], spec["crop"]
    items = []
    for i in range(b):
        img, lab = synthetic_he(c, c, seed=i)
        item = {"image": torch.from_numpy(img).permute(2, 0, 1).float() / 255.0}
        item.update(task.target_fn(torch.from_numpy(lab.astype(np.int64))))
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
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
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
    pred.predict(image)  # warm-up
    net, post = [], []
    for _ in range(spec["infer_repeats"]):
        t = time.perf_counter()
        probs = pred.predict_proba(image)
        t1 = time.perf_counter()
        labels = pred.postprocess(probs)
        t2 = time.perf_counter()
        net.append(t1 - t)
        post.append(t2 - t1)
    mp = image.shape[0] * image.shape[1] / 1e6
    n, p = statistics.median(net), statistics.median(post)
    return {"image": f"{source} {image.shape[1]}x{image.shape[0]}", "scale": pred.scale,
            "s_per_mp": (n + p) / mp, "net_s": n, "post_s": p, "post_share": p / (n + p),
            "glands": int(labels.max()), "peak_rss_mib": peak_rss_mib()}


def child_mem(spec: dict) -> dict:
    import torch

    from glandseg.infer.predictor import Predictor, TileConfig

    torch.manual_seed(0)
    model, cfg = _load(spec)
    pred = Predictor(model, cfg, "cpu")
    if spec.get("tile"):
        pred.tiling = TileConfig(tile=spec["tile"], overlap=spec["tile"] // 8)
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

def model_list(args: argparse.Namespace) -> list[dict]:
    if args.model_path:
        from glandseg.train.checkpoint import resolve_model

        cfg, _ = resolve_model(args.model_path)
        label = f"{cfg['model']} ({Path(args.model_path).name})"
        return [{"label": label, "model": cfg["model"], "width": None,
                 "model_path": str(args.model_path)}]
    return [{"label": f"unet (width {args.width})", "model": "unet", "width": args.width,
             "model_path": None},
            {"label": "unet-lite0", "model": "unet-lite0", "width": None, "model_path": None}]


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=None,
                    help="plain U-Net width (default 32; 4 with --quick)")
    ap.add_argument("--model-path", default=None,
                    help="a trained run folder or .safetensors to benchmark instead of the "
                         "untrained architectures")
    ap.add_argument("--glas", default=str(DEFAULT_GLAS), help="GlaS folder for the 775x522 image")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not numbers")
    ap.add_argument("--readme", default=str(README), help="where to write the results (markdown)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        logging.disable(logging.WARNING)
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0

    settings = QUICK if args.quick else FULL
    if args.width is None:
        args.width = 4 if args.quick else 32
    glas = args.glas if Path(args.glas).is_dir() else None
    mach = machine()
    mode = "quick (smoke test: tiny sizes, numbers not meaningful)" if args.quick else "full"
    print(f"machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram_gib']} GiB RAM, "
          f"load {mach['load_1min']}, torch {mach['torch']} ({mach['torch_threads']} threads)")
    print(f"mode: {mode}")

    train_rows, infer_rows, mem_rows = [], [], []
    for m in model_list(args):
        base = {"model": m["model"], "width": m["width"], "model_path": m["model_path"], **settings}
        t = run_child({**base, "kind": "train"})
        train_rows.append([m["label"], f"{t['params_m']:.2f}", f"{settings['batch']}x"
                           f"{settings['crop']}²", f"{t['images_per_s']:.2f}",
                           f"{t['s_per_step']:.2f}", f"{t['peak_rss_mib']:.0f}"])
        print(f"[train] {m['label']}: {t['images_per_s']:.2f} img/s, peak RSS "
              f"{t['peak_rss_mib']:.0f} MiB", flush=True)
        i = run_child({**base, "kind": "infer", "glas": glas})
        infer_rows.append([m["label"], i["image"], f"{i['scale']:g}", f"{i['s_per_mp']:.2f}",
                           f"{i['net_s']:.2f}", f"{i['post_s']:.3f}",
                           f"{100 * i['post_share']:.0f} %"])
        print(f"[infer] {m['label']}: {i['s_per_mp']:.2f} s/MP, post-processing "
              f"{100 * i['post_share']:.0f} %", flush=True)
        small = run_child({**base, "kind": "mem", "side": settings["mem_small"]})
        large = run_child({**base, "kind": "mem", "side": settings["mem_large"]})
        g_small = max(small["peak_rss_mib"] - small["base_rss_mib"], 1e-3)
        g_large = large["peak_rss_mib"] - large["base_rss_mib"]
        mem_rows.append([m["label"], f"{small['side']}² / {large['side']}²",
                         f"{small['peak_rss_mib']:.0f} / {large['peak_rss_mib']:.0f}",
                         f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}",
                         f"{g_small:.0f} / {g_large:.0f}", f"{g_large / g_small:.1f}",
                         f"{small['seconds']:.1f} / {large['seconds']:.1f}"])
        print(f"[memory] {m['label']}: peak {small['peak_rss_mib']:.0f} → "
              f"{large['peak_rss_mib']:.0f} MiB (×{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}"
              f"; growth over loaded model ×{g_large / g_small:.1f}) for ×"
              f"{(large['side'] / small['side']) ** 2:.0f} pixels", flush=True)

    tables = [
        "### Training (forward + backward + AdamW step, one process per model)\n\n" + fmt_table(
            ["model", "params (M)", "batch", "images/s", "s/step", "peak RSS (MiB)"], train_rows),
        "### Inference (Predictor.predict, median of repeats)\n\n" + fmt_table(
            ["model", "image", "scale", "s / megapixel", "network (s)", "post-processing (s)",
             "post share"], infer_rows),
        "### Memory of large images (one process per size)\n\n" + fmt_table(
            ["model", "sizes", "peak RSS (MiB)", "peak ratio", "growth over loaded model (MiB)",
             "growth ratio", "seconds"], mem_rows),
    ]
    print()
    print("\n\n".join(tables))
    write_readme(Path(args.readme), mach, mode, settings, args, glas, tables)
    print(f"\nwritten to {args.readme}")
    return 0


def write_readme(path: Path, mach: dict, mode: str, settings: dict, args, glas, tables) -> None:
    from glandseg.data.io import write_text

    cmd = "nice -n 19 .venv/bin/python benchmarks/bench_unet.py" + (" --quick" if args.quick else "")
    if args.model_path:
        cmd += f" --model-path {args.model_path}"
    text = f"""# U-Net benchmark (CPU)

Produced by `benchmarks/bench_unet.py` ({time.strftime('%Y-%m-%d %H:%M %Z')}), mode: **{mode}**.

Command: `{cmd}`

Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram_gib']} GiB RAM; 1-min load
{mach['load_1min']} when started; Python {mach['python']}, torch {mach['torch']}
({mach['torch_threads']} threads).

What is measured (each row in its own subprocess, so imports and caches do not leak between
measurements; peak RSS is the kernel's `VmHWM`, reset after set-up where the kernel allows):

- **Training**: forward + backward + AdamW step of the model's own loss (binary BCE with
  Ronneberger weights for `unet`, weighted CE + soft Dice for `unet-lite0`) on a batch of
  {settings['batch']} crops of {settings['crop']}×{settings['crop']}; one warm-up step, then
  {settings['train_steps']} timed steps. Peak RSS of that process.
- **Inference**: `Predictor.predict` on a 775×522 image ({'GlaS testA_1' if glas else
  'synthetic, GlaS not found'}) at the model config's working scale; time per megapixel of
  input, split into the network (`predict_proba`: resize, tiles, forward, blend, upsample) and
  post-processing (thresholds, watershed, hole filling). Untrained weights
  ({'trained run' if args.model_path else 'pretrained=False'}) make post-processing times only
  indicative: they depend on how many objects the probabilities contain.
- **Memory**: peak RSS of predicting a {settings['mem_large']}² image vs a
  {settings['mem_small']}² one (×{(settings['mem_large'] // settings['mem_small']) ** 2} pixels).
  *Peak ratio* includes the interpreter, torch and the weights; *growth ratio* is the increase
  over the RSS once the model is loaded, i.e. what the image itself costs. The Predictor tiles
  at the working scale (tile {settings['tile'] or 512} px), so the network's activations are
  bounded; what grows is the image, the probability canvas at full size and post-processing.

{chr(10).join(t + chr(10) for t in tables)}
Plain U-Net width: {args.width} (the study's is 64; width 32 has 1/4 of the parameters and
compute). Numbers on a loaded machine (see load above) are lower bounds on speed.
"""
    write_text(path, text)


if __name__ == "__main__":
    sys.exit(main())
