"""Training images/s: the device-resident tensor pipeline vs today's DataLoader path.

Both pipelines produce the same kind of batch for ``unet-lite0`` (contour targets and
Ronneberger weight map) from the same GlaS training images at the same working scale and
crop:

- ``loader``: ``GlasDataset`` (decoded images cached in RAM, as ``glandseg train`` does) with
  ``train_transform`` (torchvision v2: rotation, elastic, crop, flips, HED/colour jitter)
  and the task's per-crop targets (contour classes + weight map by distance transforms),
  through a ``DataLoader`` with ``--workers`` processes;
- ``tensor``: :class:`glandseg.train.gpu_data.TensorTrainData` on the same device (here the
  CPU): images, labels and per-image maps decoded once, each batch cut and augmented in one
  go (dihedral, rotation, zoom, elastic, HED x0.6-1.4, brightness/contrast, blur, noise),
  targets from the augmented labels.

Measured in ``--rounds`` interleaved rounds (the machine is shared): (a) data only, crops/s;
(b) with a training step of ``unet-lite0`` (random weights, AdamW) on each batch, training
images/s. Median and range over rounds. Writes ``benchmarks/results/gpu_data.json`` and
``gpu_data.md``. Run::

    nice -n 10 .venv/bin/python benchmarks/bench_gpu_data.py [--glas DIR] [--images 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from glandseg.data.dataset import GlasDataset
from glandseg.data.discover import discover
from glandseg.data.io import write_text
from glandseg.data.transforms import AugmentConfig, train_transform
from glandseg.models import registry
from glandseg.train.gpu_data import GpuAugment, TensorTrainData
from glandseg.train.tasks import DenseTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glas", default=str(ROOT.parent / "shared" / "glas"))
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=4, help="batches per measurement")
    p.add_argument("--steps", type=int, default=2, help="training steps per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_data"))
    a = p.parse_args()
    torch.manual_seed(0)
    samples = [s for s in discover(a.glas) if s.split == "train"][: a.images]
    scale = a.scale
    task = DenseTask("contour", boundary_width=max(1, round(4 * scale)), sigma=10 * scale)
    t = time.time()
    ds = GlasDataset(samples, train_transform(AugmentConfig(crop=a.crop)), scale=scale,
                     cache=True, target_fn=task.target_fn, repeats=1000)
    for i in range(len(samples)):
        ds.load(i)
    load_loader = time.time() - t
    t = time.time()
    tensor = TensorTrainData.from_samples(samples, GpuAugment(crop=a.crop), scale=scale,
                                          boundary_width=max(1, round(4 * scale)),
                                          sigma=10 * scale)
    load_tensor = time.time() - t
    loader = DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                        collate_fn=task.collate, persistent_workers=a.workers > 0)
    it = iter(loader)
    cfg = registry.default_config("unet-lite0")
    net = registry.build_model(cfg, pretrained=False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    mean = torch.tensor(cfg["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["preprocess"]["std"]).view(1, 3, 1, 1)
    step_no = [0]

    def loader_batch() -> dict:
        return next(it)

    def tensor_batch() -> dict:
        step_no[0] += 1
        return tensor.batch(step_no[0], a.batch)

    def train_step(b: dict) -> None:
        loss = task.supervised(net((b["image"] - mean) / std), b)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def data_rate(get) -> float:
        t0 = time.perf_counter()
        for _ in range(a.batches):
            get()
        return a.batches * a.batch / (time.perf_counter() - t0)

    def train_rate(get) -> float:
        t0 = time.perf_counter()
        for _ in range(a.steps):
            train_step(get())
        return a.steps * a.batch / (time.perf_counter() - t0)

    loader_batch(), tensor_batch(), train_step(tensor_batch())  # warm-up
    res = {k: [] for k in ("data_loader", "data_tensor", "train_loader", "train_tensor")}
    for r in range(a.rounds):
        res["data_loader"].append(data_rate(loader_batch))
        res["data_tensor"].append(data_rate(tensor_batch))
        res["train_loader"].append(train_rate(loader_batch))
        res["train_tensor"].append(train_rate(tensor_batch))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in res.items()),
              flush=True)
    summary = {k: {"median": round(statistics.median(v), 2), "min": round(min(v), 2),
                   "max": round(max(v), 2)} for k, v in res.items()}
    out = {"what": "images/s (crops/s), median and range over interleaved rounds",
           "settings": {k: v for k, v in vars(a).items() if k not in ("glas", "out")},
           "load_seconds": {"loader_cache": round(load_loader, 1),
                            "tensor": round(load_tensor, 1)},
           "tensor_data_mb": round(tensor.nbytes() / 2**20, 1),
           "results": summary, "speedup_data": round(summary["data_tensor"]["median"]
                                                    / summary["data_loader"]["median"], 2),
           "speedup_train": round(summary["train_tensor"]["median"]
                                  / summary["train_loader"]["median"], 2),
           "machine": machine()}
    write_text(a.out + ".json", json.dumps(out, indent=2) + "\n")
    md = ["| pipeline | data only (crops/s) | with a unet-lite0 step (images/s) |",
          "|---|---|---|"]
    for name in ("loader", "tensor"):
        d, tr = summary[f"data_{name}"], summary[f"train_{name}"]
        md.append(f"| {name} | {d['median']} ({d['min']}-{d['max']}) | {tr['median']} "
                  f"({tr['min']}-{tr['max']}) |")
    md.append("")
    md.append(f"{a.images} GlaS training images, scale {a.scale}, crop {a.crop}, batch "
              f"{a.batch}, loader workers {a.workers}, {a.rounds} rounds; CPU: "
              f"{out['machine']['cpu']} ({out['machine']['cores']} cores, load "
              f"{out['machine']['load_1min']}). Speed-up, data only: {out['speedup_data']}x; "
              f"with the training step: {out['speedup_train']}x.")
    write_text(a.out + ".md", "\n".join(md) + "\n")
    print(json.dumps(out["results"], indent=1), out["speedup_data"], out["speedup_train"])


if __name__ == "__main__":
    main()
