"""Benchmark the data layer on GlaS against the real models: can the loader feed training?

(a) For each training recipe (``glandseg train`` defaults, and the ``glas-unet-v2`` and
    ``glas-maskrcnn-v2`` presets: model, working scale, crop and batch size read from
    glandseg itself), the real model (``unet-lite0`` / ``maskrcnn-lite0``, built by the
    registry, random weights: the step costs the same) takes training steps (the task's
    loss, backward, AdamW step) on a real batch, and the real training ``DataLoader``
    (``GlasDataset`` over the 85 GlaS training images with the training augmentation, the
    task's targets and collate, decoded images cached as ``glandseg train`` does) delivers
    batches with 0, 1 and 2 worker processes. Both are in images per second; loader /
    model > 1 means the loader keeps up with the model on this CPU.
(b) Per-sample cost of the augmentation before and after commit a5af239 (coarse-grid
    elastic field, windowed Ronneberger weight map), on the same images with the same
    random draws: the elastic deformation alone (p = 1, on the scaled image), the weight
    map alone (on a crop of the recipe's size) and one whole training item (augmentation +
    targets, elastic with its training probability). The old code is vendored, unchanged,
    in ``benchmarks/_old_augment.py``.
(c) Peak RSS of iterating the lazy dataset (no cache) over the 85 training images and
    over the same 85 listed 10 times, each in a fresh subprocess: it must not grow.

The CPU may be shared: every measurement is repeated in ``--rounds`` rounds, interleaved
(model steps, loader with 0/1/2 workers, old/new augmentation alternate within a round), and
the median and the range over rounds are reported. Results go to
``benchmarks/results/data.json`` and ``data.md``. Run::

    nice -n 19 .venv/bin/python benchmarks/bench_data.py [--glas DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from glandseg.data.dataset import GlasDataset
from glandseg.data.discover import discover
from glandseg.data.io import write_text
from glandseg.data.transforms import AugmentConfig, SafeElastic, train_transform
from glandseg.models import registry
from glandseg.models.targets import unet_weight_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402
from _old_augment import OldSafeElastic, OldTargetMaker, old_unet_weight_map  # noqa: E402

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DEFAULT_GLAS = HERE.parent.parent / "shared" / "glas"


# ------------------------------------------------------------------- recipes


def recipes() -> dict[str, dict]:
    """``{name: {"model", "scale", "crop", "batch"}}`` as ``glandseg train`` uses them."""
    from glandseg.train.loop import TrainConfig
    from glandseg.train.presets import preset_settings, preset_stages

    tc = TrainConfig()
    out = {"train defaults": {"model": tc.model, "scale": tc.scale, "crop": tc.crop,
                              "batch": tc.batch_size}}
    for name in ("glas-unet-v2", "glas-maskrcnn-v2"):
        s = preset_settings(name)
        stage = preset_stages(name, s["model"])[0]
        out[name] = {"model": s["model"], "scale": s.get("scale"), "crop": s["crop"],
                     "batch": stage["batch_size"]}
    for r in out.values():
        if r["scale"] is None:
            r["scale"] = registry.default_config(r["model"])["preprocess"]["scale"]
    return out


def _make_task(cfg: dict):
    from glandseg.train.loop import make_task

    return make_task(cfg)


def setup(glas: Path, r: dict) -> tuple[dict, object, GlasDataset]:
    """Model config, task and the training dataset of recipe ``r`` (images decoded and
    scaled once, as ``glandseg train``'s cache holds them after the first epoch)."""
    cfg = registry.default_config(r["model"])
    cfg["preprocess"]["scale"] = r["scale"]
    task = _make_task(cfg)
    samples = discover(glas, splits=("train",))
    ds = GlasDataset(samples, train_transform(AugmentConfig(crop=r["crop"])), scale=r["scale"],
                     cache=True, target_fn=task.target_fn, repeats=1000)
    for i in range(len(samples)):
        ds.load(i)
    return cfg, task, ds


def _worker_init(worker_id: int) -> None:  # as glandseg.train.loop
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


#: Loader settings: ``{label: (worker processes, torch threads of the main process)}``;
#: ``None`` = torch's default (one per core), what ``glandseg train --workers 0`` runs with.
#: Workers always use 1 thread (``glandseg.train.loop._worker_init``).
LOADER_SETTINGS = {"0": (0, None), "0, 1 thread": (0, 1), "1": (1, None), "2": (2, None)}


@contextlib.contextmanager
def _torch_threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _loader(ds: GlasDataset, task, batch: int, workers: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                      collate_fn=task.collate, generator=torch.Generator().manual_seed(0),
                      worker_init_fn=_worker_init)


# ------------------------------------------------------------------- (a) timings


class Stepper:
    """The recipe's model and optimizer; :meth:`time` runs training steps on one batch."""

    def __init__(self, cfg: dict, task, batch: dict) -> None:
        torch.manual_seed(0)
        self.model = registry.build_model(cfg, pretrained=False)
        self.model.train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        pre = cfg["preprocess"]
        self.mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
        self.task, self.batch = task, batch
        self.step()  # warm-up

    def step(self) -> None:
        loss = self.task.loss(self.model, self.batch, self.mean, self.std)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def time(self, steps: int) -> float:
        """Seconds per step."""
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - t) / steps


def time_loader(ds: GlasDataset, task, batch: int, workers: int, batches: int) -> dict:
    """Images/s of the training loader in steady state: ``workers + 1`` batches are taken
    first (worker start-up, and the batches the workers made side by side meanwhile), then
    ``batches`` are timed. Each worker may have part of a batch done when the clock starts,
    so the figure can be high by up to ``workers / batches``."""
    it = iter(_loader(ds, task, batch, workers))
    t0 = time.perf_counter()
    for _ in range(workers + 1):
        next(it)
    first = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    del it
    return {"images_per_s": batches * batch / dt, "warmup_s": first}


# ------------------------------------------------------- (b) old vs new augmentation


def _seeded(seed: int, fn, *args):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def time_augment(ds: GlasDataset, r: dict, items: int, round_i: int) -> dict:
    """Seconds per sample, old and new, of the elastic field, the weight map and a whole
    training item, on the same images with the same seeds (old/new order alternates)."""
    n = len(ds.samples)
    new_el, old_el = SafeElastic(alpha=40.0, sigma=6.0), OldSafeElastic(alpha=40.0, sigma=6.0)
    tm = ds.target_fn
    width = getattr(tm, "boundary_width", None)
    sigma, w0 = getattr(tm, "sigma", None), getattr(tm, "w0", None)
    old_ds = None
    if width is not None:  # dense task: the same dataset with the old elastic and targets
        old_ds = GlasDataset(ds.samples, _old_pipeline(ds.transform), scale=ds.scale, cache=True,
                             target_fn=OldTargetMaker(width, w0, sigma), repeats=1)
        old_ds._cache = ds._cache
    crop = r["crop"]
    out = {k: [0.0, 0.0] for k in ("elastic", "weight_map", "item")}
    order = (0, 1) if round_i % 2 == 0 else (1, 0)
    for d in (ds, old_ds) if old_ds is not None else (ds,):  # warm-up (first-call costs)
        d[0]
    for k in range(items):
        i = (k * 7 + round_i) % n
        img, lab = ds.load(i)
        image, mask = tv_tensors.Image(img), tv_tensors.Mask(lab)
        seed = 1000 * round_i + k
        for which in order:
            el = (new_el, old_el)[which]
            out["elastic"][which] += _seeded(seed, el, image, mask)
        if width is not None:
            y0 = (lab.shape[0] - min(crop, lab.shape[0])) // 2
            x0 = (lab.shape[1] - min(crop, lab.shape[1])) // 2
            sub = lab[y0:y0 + crop, x0:x0 + crop].numpy()
            for which in order:
                wm = (unet_weight_map, old_unet_weight_map)[which]
                out["weight_map"][which] += _seeded(seed, wm, sub, w0, sigma)
            for which in order:
                d = (ds, old_ds)[which]
                out["item"][which] += _seeded(seed, d.__getitem__, i)
    res = {}
    for key, (new, old) in out.items():
        if new > 0:
            res[key] = {"new_s": new / items, "old_s": old / items, "ratio": old / new}
    return res


def _old_pipeline(transform):
    """A copy of the training ``Compose`` with :class:`OldSafeElastic` in place of the new."""
    import copy

    t = copy.deepcopy(transform)
    for op in t.transforms:
        inner = getattr(op, "transforms", None)
        if inner:
            for j, sub in enumerate(inner):
                if isinstance(sub, SafeElastic):
                    inner[j] = OldSafeElastic(alpha=sub.alpha, sigma=sub.sigma)
    return t


# ---------------------------------------------------------------------- (c) memory


def _rss_mib() -> tuple[float, float]:
    """``(current, peak)`` resident set size of this process in MiB (``VmHWM``: reset by
    ``exec``, unlike ``ru_maxrss``); elsewhere ``ru_maxrss``."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
            if ":" in line
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def rss_child(glas: Path, repeat: int) -> None:
    """(Subprocess) decode + scale 0.5 every training image, listed ``repeat`` times, no
    cache; print the peak RSS after the first item and at the end (MiB) as JSON."""
    samples = discover(glas, splits=("train",)) * repeat
    data = GlasDataset(samples, scale=0.5)
    data[0]
    base = _rss_mib()[1]
    t = time.perf_counter()
    for i in range(len(data)):
        data[i]
    print(json.dumps({"items": len(data), "baseline_mib": base, "peak_mib": _rss_mib()[1],
                      "seconds": time.perf_counter() - t}))


def run_rss(glas: Path, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--glas", str(glas), "--rss-child", str(repeat)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------ report


def _spread(values: list[float], fmt: str = ".2f") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Data layer benchmark (`benchmarks/bench_data.py`)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores, {m['ram_gib']} GiB RAM, 1-min load "
        f"{m['load_1min']} at start; Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads in the main process, 1 per loader worker). All on CPU. "
        "The CPU is shared with other work: each figure is the median over "
        f"{res['rounds']} interleaved rounds, with the range in brackets.",
        "",
        "## (a) Training loader vs the real model's training step",
        "",
        "Model: the task's loss, backward and an AdamW step on one real batch, with torch's "
        "default thread pool (what training runs with) and with 1 thread (less sensitive to "
        "the load of a shared machine: threads of one pool waiting for each other).",
        "",
        "| recipe | model (parameters) | scale, crop, batch | step s | img/s | step s, 1 thread "
        "| img/s, 1 thread |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, r in res["recipes"].items():
        ips = [r["batch"] / s for s in r["step_s"]]
        ips1 = [r["batch"] / s for s in r["step_1thread_s"]]
        lines.append(
            f"| {name} | {r['model']} ({r['params'] / 1e6:.1f} M) | {r['scale']}, {r['crop']}, "
            f"{r['batch']} | {_spread(r['step_s'])} | {_spread(ips)} | "
            f"{_spread(r['step_1thread_s'])} | {_spread(ips1)} |")
    lines += [
        "",
        "| recipe | loader | loader img/s | loader / model | loader / model at 1 thread |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in res["recipes"].items():
        ips = statistics.median(r["batch"] / s for s in r["step_s"])
        ips1 = statistics.median(r["batch"] / s for s in r["step_1thread_s"])
        for key in LOADER_SETTINGS:
            med = statistics.median(r["loader"][key])
            label = {"0": "0 workers", "0, 1 thread": "0 workers, 1 torch thread",
                     "1": "1 worker"}.get(key, f"{key} workers")
            lines.append(f"| {name} | {label} | {_spread(r['loader'][key])} | "
                         f"{med / ips:.1f} | {med / ips1:.1f} |")
    lines += [
        "",
        "Loader: `GlasDataset` over the 85 training images with the training augmentation and "
        "the task's targets (contour classes + Ronneberger weight map for the U-Net, boxes + "
        "masks for Mask R-CNN), decoded images cached, timed in steady state (after "
        "workers + 1 batches; can read high by up to workers / timed batches). With 0 workers "
        "the augmentation runs in the main process with torch's default thread pool (one "
        "thread per core), as `glandseg train --workers 0` does; on a loaded machine the "
        "small per-item tensor operations then lose most of their time to the threads "
        "waiting for each other, hence the row with 1 thread. A ratio below 1 means "
        "the model waits for data on this CPU (the two compete for the same cores when "
        "workers > 0, so the ratio is an upper bound of what training sees).",
        "",
        "## (b) Augmentation before and after commit a5af239 (per sample)",
        "",
        "| recipe | part | old s/sample | new s/sample | old / new |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in res["recipes"].items():
        for part, v in r["augment"].items():
            lines.append(f"| {name} | {part} | {_spread(v['old_s'], '.4f')} | "
                         f"{_spread(v['new_s'], '.4f')} | {_spread(v['ratio'], '.1f')}x |")
    lines += [
        "",
        "elastic: the elastic deformation of one scaled image + mask (p = 1); weight_map: "
        "the Ronneberger weight map of one crop of the recipe's size; item: one whole "
        "training item (rotation, elastic with p = 0.3, crop, flips, colour, targets), all "
        "with 1 torch thread as in a loader worker. Old = "
        "`benchmarks/_old_augment.py` (the code before a5af239), same images and seeds.",
    ]
    if res.get("rss"):
        lines += [
            "",
            "## (c) Peak memory of the lazy dataset (no cache)",
            "",
            "| items | peak RSS after 1 item (MiB) | final peak RSS (MiB) | growth (MiB) | time (s) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in res["rss"]:
            lines.append(f"| {r['items']} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | "
                         f"{r['peak_mib'] - r['baseline_mib']:.0f} | {r['seconds']:.1f} |")
        a, b = res["rss"]
        lines += ["", f"Peak RSS 850 / 85 items: **{b['peak_mib'] / a['peak_mib']:.3f}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glas", type=Path,
                    default=Path(os.environ.get("GLANDSEG_GLAS", DEFAULT_GLAS)))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1, help="model steps per round")
    ap.add_argument("--batches", type=int, default=6, help="timed loader batches per round")
    ap.add_argument("--items", type=int, default=6, help="augmented samples per round")
    ap.add_argument("--recipes", default="all",
                    help="comma-separated recipe names (default: all)")
    ap.add_argument("--no-rss", action="store_true", help="skip the memory part (c)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "data")
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(args.glas, args.rss_child)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.glas.is_dir():
        print(f"GlaS data not found at {args.glas}; pass --glas or set GLANDSEG_GLAS")
        return 1
    all_recipes = recipes()
    chosen = list(all_recipes) if args.recipes == "all" else args.recipes.split(",")
    res = {
        "command": "nice -n 19 .venv/bin/python benchmarks/bench_data.py"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "rounds": args.rounds, "recipes": {},
    }
    for name in chosen:
        r = dict(all_recipes[name])
        cfg, task, ds = setup(args.glas, r)
        batch = next(iter(_loader(ds, task, r["batch"], 0)))
        stepper = Stepper(cfg, task, batch)
        r.update(params=stepper.params, step_s=[], step_1thread_s=[], augment={},
                 loader={key: [] for key in LOADER_SETTINGS})
        for k in range(args.rounds):
            for threads in (None, 1) if k % 2 == 0 else (1, None):
                with _torch_threads(threads):
                    key = "step_s" if threads is None else "step_1thread_s"
                    r[key].append(stepper.time(args.steps))
            for key in list(LOADER_SETTINGS)[:: 1 if k % 2 == 0 else -1]:
                workers, threads = LOADER_SETTINGS[key]
                with _torch_threads(threads):
                    r["loader"][key].append(
                        time_loader(ds, task, r["batch"], workers, args.batches)["images_per_s"])
            with _torch_threads(1):
                augment = time_augment(ds, r, args.items, k)
            for part, v in augment.items():
                acc = r["augment"].setdefault(part, {"old_s": [], "new_s": [], "ratio": []})
                for key in acc:
                    acc[key].append(v[key])
            log.info("%s round %d: step %.2f s, loader %s img/s, augment %s", name, k + 1,
                     r["step_s"][-1], {w: round(v[-1], 2) for w, v in r["loader"].items()},
                     {p: round(v["ratio"][-1], 1) for p, v in r["augment"].items()})
        res["recipes"][name] = r
        del stepper, ds
    if not args.no_rss:
        res["rss"] = [run_rss(args.glas, 1), run_rss(args.glas, 10)]
    text = report(res)
    print(text)
    write_text(args.out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    write_text(args.out.with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
