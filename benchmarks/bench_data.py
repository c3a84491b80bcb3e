"""Benchmark the data layer on GlaS: can the loader feed training, and does memory stay flat?

(a) Loader throughput: images/s through a ``DataLoader`` over the 85 training images with
    the training augmentation (scale 0.5, crop 256, batch 4), with 0 and 2 workers,
    against one training step (forward + backward + Adam step) of a tiny U-Net-like
    conv net on a batch of 4 crops of 256x256 on the same CPU. Ratio > 1: the loader
    is faster than the model consumes.
(b) Peak RSS of iterating the lazy dataset (no cache; decode + scale 0.5) over the 85
    training images and over the same 85 listed 10 times (850 items), each in a fresh
    subprocess (``VmHWM``, the peak resident set): it must not grow with the data set. The cost of
    ``cache=True`` over the 85 images is shown for comparison.

Results are printed with the machine (CPU model, cores, RAM, load) and written to
``benchmarks/README_data.md``. Run::

    nice -n 19 .venv/bin/python benchmarks/bench_data.py [--glas DIR] [--batches N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from glandseg.data.dataset import GlasDataset
from glandseg.data.discover import discover
from glandseg.data.io import write_text
from glandseg.data.transforms import AugmentConfig, train_transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DEFAULT_GLAS = HERE.parent.parent / "shared" / "glas"
SCALE, CROP, BATCH = 0.5, 256, 4


class TinyUNet(nn.Module):
    """A small U-Net-like net (two downsamplings, ~0.1 M parameters): stands in for one
    training step's compute."""

    def __init__(self, c: int = 16, out: int = 3) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
            )

        self.e1, self.e2, self.e3 = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.pool = nn.MaxPool2d(2)
        self.u2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.d2 = block(4 * c, 2 * c)
        self.u1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.d1 = block(2 * c, c)
        self.head = nn.Conv2d(c, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(self.pool(e1))
        e3 = self.e3(self.pool(e2))
        d2 = self.d2(torch.cat([self.u2(e3), e2], 1))
        d1 = self.d1(torch.cat([self.u1(d2), e1], 1))
        return self.head(d1)


def time_train_step(steps: int = 5) -> float:
    """Seconds per training step (batch of 4 3x256x256, 3 classes) of :class:`TinyUNet`."""
    torch.manual_seed(0)
    model = TinyUNet()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(BATCH, 3, CROP, CROP)
    y = torch.randint(0, 3, (BATCH, CROP, CROP))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def time_loader(samples: list, workers: int, batches: int) -> dict:
    """Images/s through a DataLoader with the training augmentation (after the first batch)."""
    data = GlasDataset(samples, transform=train_transform(AugmentConfig(crop=CROP)), scale=SCALE,
                       repeats=100)
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        assert batch["image"].shape == (BATCH, 3, CROP, CROP)
    dt = time.perf_counter() - t
    del it
    return {"workers": workers, "images": batches * BATCH, "seconds": dt,
            "images_per_s": batches * BATCH / dt, "first_batch_s": first}


def _rss_mib() -> tuple[float, float]:
    """``(current, peak)`` resident set size of this process in MiB. The peak is
    ``VmHWM`` (reset by ``exec``, unlike ``ru_maxrss``, which Linux carries over from the
    parent process); elsewhere ``ru_maxrss``."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
            if ":" in line
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def rss_child(glas: Path, repeat: int, cache: bool) -> None:
    """(Subprocess) iterate the lazy dataset (decode + scale 0.5, no augmentation: the
    decoding is what could hold memory) over the training images listed ``repeat`` times;
    print baseline and peak RSS in MiB as JSON."""
    samples = discover(glas, splits=("train",)) * repeat
    data = GlasDataset(samples, scale=SCALE, cache=cache)
    data[0]  # baseline after the first item: allocator pools, lazy imports
    base = _rss_mib()[1]
    t = time.perf_counter()
    for i in range(len(data)):
        data[i]
    peak = _rss_mib()[1]
    print(json.dumps({"items": len(data), "cache": cache, "baseline_mib": base, "peak_mib": peak,
                      "seconds": time.perf_counter() - t}))


def run_rss(glas: Path, repeat: int, cache: bool = False) -> dict:
    """Run :func:`rss_child` in a fresh interpreter and return its result."""
    cmd = [sys.executable, __file__, "--glas", str(glas), "--rss-child", str(repeat)]
    if cache:
        cmd.append("--cache")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(m: dict, loaders: list[dict], step_s: float, rss: list[dict], cmd: str) -> str:
    """The Markdown results page."""
    model_ips = BATCH / step_s
    lines = [
        "# Data layer benchmark (`benchmarks/bench_data.py`)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; 1-min load "
        f"{m['load_1min']} at start (the machine is shared with a training run, so absolute "
        f"times are pessimistic); Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads). All on CPU.",
        "",
        "## (a) Loader throughput vs one training step",
        "",
        f"85 GlaS training images, training augmentation, scale {SCALE}, crop {CROP}, batch "
        f"{BATCH}. Model: a tiny U-Net-like net (~0.1 M parameters), forward + backward + Adam "
        f"on a batch of {BATCH} x 3 x {CROP} x {CROP}: **{step_s * 1000:.0f} ms/step = "
        f"{model_ips:.1f} images/s**.",
        "",
        "| workers | loader images/s | first batch (s) | loader / model |",
        "|---:|---:|---:|---:|",
    ]
    for r in loaders:
        lines.append(f"| {r['workers']} | {r['images_per_s']:.1f} | {r['first_batch_s']:.2f} | "
                     f"{r['images_per_s'] / model_ips:.2f} |")
    lines += [
        "",
        "Ratio > 1: the loader produces images faster than this model consumes them on the "
        "same CPU. On a GPU the step is much shorter, so use workers > 0 there "
        "(each worker adds the throughput of one core).",
        "",
        "## (b) Peak memory of the lazy dataset",
        "",
        "Each row is a fresh subprocess reading every item once (decode + rescale to "
        f"{SCALE}, no augmentation); 850 = the 85 training images listed 10 times. Baseline = "
        "peak RSS after the first item (interpreter, torch, allocator pools); peak = VmHWM "
        "at the end.",
        "",
        "| items | cache | baseline peak RSS (MiB) | final peak RSS (MiB) | growth (MiB) | time (s) |",
        "|---:|:---:|---:|---:|---:|---:|",
    ]
    for r in rss:
        lines.append(f"| {r['items']} | {'yes' if r['cache'] else 'no'} | {r['baseline_mib']:.0f} | "
                     f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['baseline_mib']:.0f} | "
                     f"{r['seconds']:.1f} |")
    lazy = [r for r in rss if not r["cache"]]
    if len(lazy) == 2:
        ratio = lazy[1]["peak_mib"] / lazy[0]["peak_mib"]
        lines += ["", f"Peak RSS 850 / 85 items (no cache): **{ratio:.3f}** "
                  f"({'flat' if ratio < 1.1 else 'GROWS with the data set'})."]
    lines += ["", "With `cache=True` each worker keeps the decoded, scaled images and labels "
              "(uint8 image + int64 labels) in RAM: memory grows with the number of distinct images."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one RSS child) and write ``benchmarks/README_data.md``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glas", type=Path,
                    default=Path(os.environ.get("GLANDSEG_GLAS", DEFAULT_GLAS)))
    ap.add_argument("--batches", type=int, default=15, help="timed batches per loader run")
    ap.add_argument("--out", type=Path, default=HERE / "README_data.md")
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(args.glas, args.rss_child, args.cache)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.glas.is_dir():
        print(f"GlaS data not found at {args.glas}; pass --glas or set GLANDSEG_GLAS")
        return 1
    m = machine()
    log.info("machine: %s", m)
    samples = discover(args.glas, splits=("train",))
    step_s = time_train_step()
    log.info("train step: %.0f ms (%.1f images/s)", step_s * 1000, BATCH / step_s)
    loaders = []
    for w in (0, 2):
        r = time_loader(samples, w, args.batches)
        log.info("loader, %d workers: %.1f images/s (ratio %.2f)", w, r["images_per_s"],
                 r["images_per_s"] * step_s / BATCH)
        loaders.append(r)
    rss = []
    for repeat, cache in ((1, False), (10, False), (1, True)):
        r = run_rss(args.glas, repeat, cache)
        log.info("RSS %d items cache=%s: peak %.0f MiB (baseline %.0f)", r["items"], cache,
                 r["peak_mib"], r["baseline_mib"])
        rss.append(r)
    cmd = "nice -n 19 .venv/bin/python benchmarks/bench_data.py" + (
        f" --batches {args.batches}" if args.batches != 15 else "")
    text = report(m, loaders, step_s, rss, cmd)
    print(text)
    write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
