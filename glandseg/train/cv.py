"""Patient-wise k-fold cross-validation on device-resident data (the glas-unet v5 recipe).

Every annotated training image is held out exactly once: the patients (``Grade.csv``) are
dealt into ``folds`` folds, balanced by image count and grade; fold ``k``'s model trains on
the other folds' images (:class:`glandseg.train.gpu_data.TensorTrainData`: decoded once
onto the device, augmented there in batches; AMP bf16 and channels_last on CUDA) and
predicts its own held-out images (out-of-fold, OOF). Every choice is then made on the OOF
predictions of all images: the test-time augmentation (none, flips, the 8 dihedral
poses), the seeds of the watershed (interior/boundary classes, or the distance head's
normalised distance map: :mod:`glandseg.infer.distance`) and their thresholds. Figures are
reported pooled over all OOF images and per fold (mean and standard deviation).

Output folder (``CVConfig.out``)::

    folds.json                    patients and images of each fold
    fold_K/weights.safetensors    fold K's model (fp32), config.json, log.csv, oof/*.npz
    final/weights.safetensors     one model on all images with the same schedule (optional)
    selection.csv, summary.json   the choices and their figures (:func:`select`)

An OOF file ``oof/<mode>/<image>.npz`` holds ``maps`` uint8 ``(C, H, W)`` at the image's
resolution: interior and boundary probabilities, and with the distance head the distance,
each x255 (background = 1 - interior - boundary).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glandseg import GlandsegError
from glandseg.data.discover import Sample, discover
from glandseg.data.io import atomic_path, read_image
from glandseg.infer.backend import pick_device
from glandseg.infer.distance import DISTANCE_GRID, distance_to_labels
from glandseg.infer.postprocess import contour_to_labels
from glandseg.metrics.gridsearch import grid_search
from glandseg.metrics.score import score_pairs
from glandseg.models import registry
from glandseg.train import checkpoint as ckpt
from glandseg.train.gpu_data import GpuAugment, TensorTrainData
from glandseg.train.tasks import DenseTask
from glandseg.train.tune import GRIDS

log = logging.getLogger(__name__)

#: Test-time augmentation modes: ``none``; ``flip``: identity + horizontal + vertical flip
#: (the Predictor's ``tta``); ``dihedral``: the 8 flips/90° rotations.
TTA_MODES = ("none", "flip", "dihedral")
#: Seeds of the watershed: ``contour`` (interior minus boundary) or ``distance`` (head).
METHODS = ("contour", "distance")


@dataclass
class CVConfig:
    """The cross-validation recipe (see the module docstring). ``steps``: optimizer steps
    per model (``max_minutes``, if set, ends a model's training earlier, the cosine decay
    following whichever runs out first). ``limit``: only the first N training images (a
    quick check). ``augment``: :class:`GpuAugment` fields over its defaults."""

    data: str = ""
    out: str = "runs/cv"
    folds: int = 5
    model: str = "unet-lite0"
    model_args: dict = field(default_factory=dict)
    scale: float = 1.0
    crop: int = 512
    batch_size: int = 16
    steps: int = 1500
    max_minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    distance: bool = True
    distance_weight: float = 1.0
    dice_weight: float = 0.5
    seed: int = 0
    device: str = "auto"
    limit: int = 0
    tta: tuple[str, ...] = TTA_MODES
    pretrained: bool = True
    amp: bool | None = None  # None: bf16 autocast on CUDA devices that support it
    channels_last: bool | None = None  # None: on CUDA
    compile: bool = False
    log_every: int = 25
    augment: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.folds < 2:
            raise GlandsegError(f"folds must be at least 2, got {self.folds}")
        bad = [m for m in self.tta if m not in TTA_MODES]
        if bad or not self.tta:
            raise GlandsegError(f"tta modes must be some of {', '.join(TTA_MODES)}, got "
                                f"{list(self.tta)}")
        if self.steps < 1 or self.batch_size < 1:
            raise GlandsegError("steps and batch_size must be at least 1")

    def augmentation(self) -> GpuAugment:
        names = {f.name for f in dataclasses.fields(GpuAugment)}
        bad = sorted(set(self.augment) - names)
        if bad:
            raise GlandsegError(f"unknown augmentation setting(s) {', '.join(bad)}; choose from "
                                f"{', '.join(sorted(names))}")
        return GpuAugment(**{**self.augment, "crop": self.crop})


# --- folds ------------------------------------------------------------------------------

def training_images(data: str | os.PathLike, limit: int = 0) -> list[Sample]:
    """The annotated GlaS training images of ``data`` (``train_*``), first ``limit`` if
    set; a one-line error when there are none or patients are unknown."""
    samples = [s for s in discover(data) if s.split == "train" and s.anno is not None]
    if not samples:
        raise GlandsegError(f"{data}: no annotated GlaS training images (train_N + "
                            "train_N_anno); point --data at the GlaS folder")
    if limit:
        samples = samples[:limit]
    if any(s.patient is None for s in samples):
        log.warning("%s: no patient IDs for some images (Grade.csv): each is its own patient",
                    data)
    return samples


def patient_folds(samples: Sequence[Sample], k: int, seed: int = 0) -> list[list[Sample]]:
    """Deal the patients into ``k`` folds (held-out sets): malignant-majority patients
    first, then benign, largest first (ties shuffled by ``seed``), each to the fold with the
    fewest images of that grade, then the fewest images. No patient is in two folds;
    every sample is in exactly one. Samples without a patient ID are their own patient.
    Raises when there are fewer patients than folds."""
    groups: dict[object, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.patient if s.patient is not None else f"_{s.name}", []).append(s)
    if len(groups) < k:
        raise GlandsegError(f"{len(groups)} patients cannot fill {k} folds; use --folds "
                            f"{max(2, len(groups))} or fewer")
    rng = np.random.default_rng(seed)
    keys = sorted(groups, key=str)
    order = rng.permutation(len(keys))
    tie = {keys[i]: int(r) for r, i in enumerate(order)}

    def grade(key) -> str:
        g = [s.grade for s in groups[key]]
        return "malignant" if g.count("malignant") * 2 > len(g) else "benign"

    folds: list[list[Sample]] = [[] for _ in range(k)]
    per_grade = {g: [0] * k for g in ("malignant", "benign")}
    for g in ("malignant", "benign"):
        ks = sorted((key for key in keys if grade(key) == g),
                    key=lambda key: (-len(groups[key]), tie[key]))
        for key in ks:
            f = min(range(k), key=lambda i: (per_grade[g][i], len(folds[i]), i))
            folds[f].extend(groups[key])
            per_grade[g][f] += len(groups[key])
    pos = {s.name: i for i, s in enumerate(samples)}
    return [sorted(f, key=lambda s: pos[s.name]) for f in folds]


# --- model ------------------------------------------------------------------------------

def model_config(cfg: CVConfig) -> dict:
    """The registry's config of ``cfg.model`` (task ``contour``) at ``cfg.scale``."""
    mc = registry.default_config(cfg.model)
    if mc["task"] != "contour":
        raise GlandsegError(f"cross-validation trains contour models (unet-lite0, ...), not "
                            f"{cfg.model} (task {mc['task']})")
    mc["model_args"].update(cfg.model_args)
    mc["model_args"]["out_channels"] = 3
    mc["preprocess"]["scale"] = cfg.scale
    return mc


class DistanceHead(nn.Module):
    """A contour network whose last convolution has one more output channel: the logit of
    the normalised distance to the gland border. ``forward`` → ``(B, 4, H, W)``: background,
    interior, boundary logits, then the distance logit."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        head = getattr(net, "head", None)
        if not isinstance(head, nn.Conv2d) or head.out_channels != 3:
            raise GlandsegError("the distance head needs a network whose 'head' is a "
                                "3-channel Conv2d (unet, unet-lite0)")
        new = nn.Conv2d(head.in_channels, 4, head.kernel_size, padding=head.padding)
        with torch.no_grad():
            new.weight[:3].copy_(head.weight)
            new.bias[:3].copy_(head.bias)
        net.head = new
        self.net = net
        self.stride = getattr(net, "stride", 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_network(cfg: CVConfig, pretrained: bool | None = None) -> nn.Module:
    """The network of ``cfg`` (with the distance head when ``cfg.distance``)."""
    net = registry.build_model(model_config(cfg),
                               pretrained=cfg.pretrained if pretrained is None else pretrained)
    return DistanceHead(net) if cfg.distance else net


def cv_loss(task: DenseTask, logits: torch.Tensor, batch: dict, distance_weight: float
            ) -> torch.Tensor:
    """Contour loss (weighted cross-entropy + soft Dice, :class:`DenseTask`) on the first
    3 channels, plus ``distance_weight`` x BCE of the 4th against ``batch["distance"]``
    (pixels outside the image weigh 0)."""
    loss = task.supervised(logits[:, :3].float(), batch)
    if logits.shape[1] > 3:
        w = (batch["weight"] > 0).float()
        d = F.binary_cross_entropy_with_logits(logits[:, 3].float(), batch["distance"],
                                               reduction="none")
        loss = loss + distance_weight * (d * w).sum() / w.sum().clamp(min=1)
    return loss


def _amp(cfg: CVConfig, device: torch.device) -> bool:
    if cfg.amp is not None:
        return bool(cfg.amp)
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def train_model(cfg: CVConfig, samples: Sequence[Sample], run: Path, tag: str) -> dict:
    """Train one model on ``samples``; writes ``run/weights.safetensors``, ``config.json``
    and ``log.csv`` (step, loss, lr, images/s). Returns ``{"steps", "seconds",
    "images_per_s", "final_loss"}``."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    aug = cfg.augmentation()
    t0 = time.time()
    data = TensorTrainData.from_samples(samples, aug, scale=cfg.scale, device=device,
                                        boundary_width=max(1, round(4 * cfg.scale)),
                                        sigma=10 * cfg.scale, seed=cfg.seed)
    load_s = time.time() - t0
    mc = model_config(cfg)
    net = build_network(cfg).to(device)
    if aug.crop % int(getattr(net, "stride", 32)):
        raise GlandsegError(f"crop {aug.crop} is not a multiple of the network's stride "
                            f"{net.stride}")
    cl = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if cl:
        net = net.to(memory_format=torch.channels_last)
    fwd = torch.compile(net) if cfg.compile else net
    task = DenseTask("contour", boundary_width=max(1, round(4 * cfg.scale)),
                     sigma=10 * cfg.scale, dice_weight=cfg.dice_weight)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    mean = torch.tensor(mc["preprocess"]["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(mc["preprocess"]["std"], device=device).view(1, 3, 1, 1)
    amp = _amp(cfg, device)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    warm = min(cfg.warmup, cfg.steps // 10)
    rows, losses = [], []
    t_train = time.time()
    step = 0
    net.train()
    while step < cfg.steps:
        spent = time.time() - t_train
        if budget is not None and spent >= budget:
            log.info("%s: time budget of %.1f min reached at step %d", tag, cfg.max_minutes, step)
            break
        prog = max((step - warm) / max(1, cfg.steps - warm), spent / budget if budget else 0)
        f = (step + 1) / warm if step < warm else 0.02 + 0.98 * 0.5 * (1 + math.cos(
            math.pi * min(1.0, prog)))
        for gr in opt.param_groups:
            gr["lr"] = cfg.lr * f
        batch = data.batch(step, cfg.batch_size)
        x = (batch["image"] - mean) / std
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = fwd(x)
        loss = cv_loss(task, logits, batch, cfg.distance_weight)
        if not torch.isfinite(loss):
            raise GlandsegError(f"{tag}: loss became {loss.item()} at step {step + 1}; lower "
                                "the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            lv = float(torch.stack(losses).mean())
            losses = []
            el = time.time() - t_train
            rows.append({"step": step, "loss": round(lv, 5), "lr": cfg.lr * f,
                         "images_per_s": round(step * cfg.batch_size / el, 2),
                         "seconds": round(el, 1)})
            log.info("%s: step %d/%d loss %.4f (%.1f img/s)", tag, step, cfg.steps, lv,
                     rows[-1]["images_per_s"])
    seconds = time.time() - t_train
    run.mkdir(parents=True, exist_ok=True)
    with atomic_path(run / "log.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "images_per_s", "seconds"])
        w.writeheader()
        w.writerows(rows)
    info = {"tag": tag, "steps": step, "seconds": round(seconds, 1),
            "load_seconds": round(load_s, 1),
            "images_per_s": round(step * cfg.batch_size / max(seconds, 1e-9), 2),
            "final_loss": rows[-1]["loss"] if rows else None, "amp_bf16": amp,
            "channels_last": cl, "device": str(device), "device_data_mb":
            round(data.nbytes() / 2**20, 1), "train_images": [s.name for s in samples]}
    ckpt.save_weights(run / "weights.safetensors", net)
    mc["train"] = {"cv": {k: v for k, v in dataclasses.asdict(cfg).items()}, **info}
    mc["model_card"] = {"distance_head": cfg.distance,
                        "note": "weights of glandseg.train.cv.build_network (with the distance "
                                "head: DistanceHead, 4 output channels); load with "
                                "glandseg.train.cv.load_network"}
    ckpt.save_json(run / "config.json", mc)
    del data
    return info


def load_network(run: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """``(network in eval mode, config dict)`` of a run folder written by
    :func:`train_model`."""
    from safetensors.torch import load_file

    run = Path(run)
    mc = ckpt.load_json(run / "config.json")
    cv = CVConfig(**{k: v for k, v in mc["train"]["cv"].items()
                     if k in {f.name for f in dataclasses.fields(CVConfig)}})
    net = build_network(cv, pretrained=False)
    net.load_state_dict(load_file(str(run / "weights.safetensors")))
    return net.to(pick_device(device)).eval(), mc


# --- prediction -------------------------------------------------------------------------

def _poses(mode: str) -> list[tuple[int, bool]]:
    """``(quarter turns, horizontal flip)`` of each TTA pose."""
    if mode == "none":
        return [(0, False)]
    if mode == "flip":
        return [(0, False), (0, True), (2, True)]  # identity, horizontal, vertical flip
    return [(k, f) for k in range(4) for f in (False, True)]


@torch.no_grad()
def predict_maps(net: nn.Module, image: np.ndarray, mc: dict, mode: str = "none",
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray | None]:
    """Whole-image prediction of ``image`` uint8 ``(H, W, 3)``: ``(probs float32 (3, H, W)``
    (background, interior, boundary), ``distance float32 (H, W)`` in [0, 1] or ``None``
    without the distance head``)``, averaged over the TTA ``mode``'s poses, at the image's
    resolution."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    pre = mc["preprocess"]
    h, w = image.shape[:2]
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255
    s = float(pre["scale"])
    if s != 1.0:
        x = F.interpolate(x, scale_factor=s, mode="bilinear", antialias=True,
                          align_corners=False, recompute_scale_factor=False)
    mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    stride = int(getattr(net, "stride", 32))
    hs, ws = x.shape[-2:]
    ph, pw = (-hs) % stride, (-ws) % stride
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(hs, ws) > max(ph, pw) else "replicate")
    acc = None
    poses = _poses(mode)
    for k, flip in poses:
        xi = torch.flip(x, [3]) if flip else x
        xi = torch.rot90(xi, k, [2, 3])
        y = net(xi).float()
        y = torch.rot90(y, -k, [2, 3])
        y = torch.flip(y, [3]) if flip else y
        p = torch.cat([torch.softmax(y[:, :3], 1), torch.sigmoid(y[:, 3:])], 1)
        acc = p if acc is None else acc + p
    p = (acc / len(poses))[:, :, :hs, :ws]
    if p.shape[-2:] != (h, w):
        p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
    p = p[0].cpu().numpy()
    return p[:3], (p[3] if p.shape[0] > 3 else None)


def save_oof(path: Path, probs: np.ndarray, distance: np.ndarray | None) -> None:
    """OOF maps → ``path`` (npz, uint8 x255: interior, boundary[, distance]), atomically."""
    maps = [probs[1], probs[2]] + ([distance] if distance is not None else [])
    q = np.clip(np.round(np.stack(maps) * 255), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, maps=q)


def load_oof(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probs float32 (3, H, W), distance float32 (H, W) or None)`` of :func:`save_oof`."""
    q = np.load(path)["maps"].astype(np.float32) / 255
    probs = np.stack([np.clip(1 - q[0] - q[1], 0, 1), q[0], q[1]])
    return probs, (q[2] if len(q) > 2 else None)


def run_fold(cfg: CVConfig, fold: int) -> dict:
    """Train fold ``fold`` (0-based; ``fold == cfg.folds``: the final model on all images)
    and, for a fold, write its OOF maps for every TTA mode. Returns the training info."""
    cfg.check()
    out = Path(cfg.out)
    samples = training_images(cfg.data, cfg.limit)
    folds = patient_folds(samples, cfg.folds, cfg.seed)
    if fold == cfg.folds:
        return train_model(cfg, samples, out / "final", "final")
    held = {s.name for s in folds[fold]}
    run = out / f"fold_{fold}"
    info = train_model(cfg, [s for s in samples if s.name not in held], run, f"fold {fold}")
    device = pick_device(cfg.device)
    net, mc = load_network(run, device)
    t0 = time.time()
    for s in folds[fold]:
        image = read_image(s.image)
        for mode in cfg.tta:
            probs, dist = predict_maps(net, image, mc, mode, device)
            save_oof(run / "oof" / mode / f"{s.name}.npz", probs, dist)
    info["oof_seconds"] = round(time.time() - t0, 1)
    info["held_out"] = sorted(held)
    ckpt.save_json(run / "info.json", info)
    return info


def write_folds(cfg: CVConfig) -> list[list[Sample]]:
    """Compute the folds and write ``folds.json``."""
    samples = training_images(cfg.data, cfg.limit)
    folds = patient_folds(samples, cfg.folds, cfg.seed)
    ckpt.save_json(Path(cfg.out) / "folds.json", {
        "folds": [{"patients": sorted({s.patient for s in f if s.patient is not None}),
                   "images": [s.name for s in f],
                   "malignant": sum(s.grade == "malignant" for s in f)} for f in folds],
        "config": dataclasses.asdict(cfg)})
    return folds


# --- selection on OOF predictions --------------------------------------------------------

_CACHE: dict = {}


def _to_labels(method: str):
    def f(out, _shape, params):
        probs, dist = out
        if method == "distance":
            return distance_to_labels(probs, dist, **params)
        return contour_to_labels(probs, **params)
    return f


def _grid_part(job: tuple[str, str, dict]) -> tuple[dict, float]:
    """One grid search over a part of a grid on the OOF maps of ``_CACHE[mode]`` (run in a
    worker process; the maps come with the fork); returns ``(params, objective)``."""
    mode, method, grid = job
    cached = _CACHE[mode]
    params, _ = grid_search(grid, cached, _to_labels(method))
    return params, _objective(score(cached, method, params))


def _objective(m: dict) -> float:
    return m["f1"] + m["object_dice"]


def score(cached: list, method: str, params: dict, split_gt: bool = False) -> dict:
    """Pooled official figures of ``cached`` = ``[(name, (probs, distance), truth)]`` under
    post-processing ``method``/``params``."""
    f = _to_labels(method)
    items = [(n, f(o, t.shape, params), t) for n, o, t in cached]
    return next(iter(score_pairs(items, split_gt=split_gt).values()))["pooled"]


def search(cached_by_mode: dict, jobs: list[tuple[str, str, dict]], workers: int = 1
           ) -> list[tuple[str, str, dict, float]]:
    """Run the grid searches ``jobs`` = ``[(mode, method, grid)]``, each split by its first
    key's values over ``workers`` processes; returns ``[(mode, method, best params,
    objective)]`` per job."""
    _CACHE.clear()
    _CACHE.update(cached_by_mode)
    parts, owners = [], []
    for j, (mode, method, grid) in enumerate(jobs):
        key = next(iter(grid))
        for v in grid[key]:
            parts.append((mode, method, {**grid, key: [v]}))
            owners.append(j)
    if workers > 1 and len(parts) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            results = list(ex.map(_grid_part, parts))
    else:
        results = [_grid_part(p) for p in parts]
    best: dict[int, tuple[dict, float]] = {}
    for j, (params, obj) in zip(owners, results, strict=True):
        if j not in best or obj > best[j][1]:
            best[j] = (params, obj)
    return [(jobs[j][0], jobs[j][1], *best[j]) for j in range(len(jobs))]


def select(out: str | os.PathLike, data: str | os.PathLike, workers: int = 1,
           grids: dict | None = None) -> dict:
    """Choose TTA mode, seed method and thresholds on the OOF maps of ``out`` (all folds):
    first the TTA mode with each method's default thresholds, then each method's grid
    (contour: :data:`glandseg.train.tune.GRIDS`, distance:
    :data:`glandseg.infer.distance.DISTANCE_GRID`) on that mode; the best objective
    (pooled F1 + object Dice) wins. Writes ``selection.csv`` and ``summary.json`` (pooled
    OOF figures, ground-truth regions split, and per-fold mean/std) and returns the summary.
    """
    out = Path(out)
    fj = ckpt.load_json(out / "folds.json", hint="run the folds first")
    names = [n for f in fj["folds"] for n in f["images"]]
    fold_of = {n: i for i, f in enumerate(fj["folds"]) for n in f["images"]}
    truth_path = {s.name: s.anno for s in discover(data) if s.name in fold_of}
    from glandseg.data.io import read_label

    truths = {n: read_label(truth_path[n]) for n in names}
    modes = sorted({p.name for i in range(len(fj["folds"]))
                    for p in (out / f"fold_{i}" / "oof").glob("*") if p.is_dir()},
                   key=TTA_MODES.index)
    cached_by_mode = {}
    for mode in modes:
        items = []
        for n in names:
            p = out / f"fold_{fold_of[n]}" / "oof" / mode / f"{n}.npz"
            if not p.is_file():
                raise GlandsegError(f"{p}: missing out-of-fold prediction; run that fold again")
            items.append((n, load_oof(p), truths[n]))
        cached_by_mode[mode] = items
    if not cached_by_mode:
        raise GlandsegError(f"{out}: no out-of-fold predictions (fold_K/oof/MODE/*.npz)")
    has_dist = all(o[1] is not None for o in (it[1] for it in next(iter(cached_by_mode.values()))))
    methods = [m for m in METHODS if m == "contour" or has_dist]
    grids = grids or {"contour": {**GRIDS["contour"], "boundary_weight": [0.0, 1.0]},
                      "distance": DISTANCE_GRID}
    rows = []
    # 1) TTA modes at default thresholds
    for mode, items in cached_by_mode.items():
        for method in methods:
            m = score(items, method, {})
            rows.append({"stage": "tta", "mode": mode, "method": method, "params": "{}",
                         "objective": round(_objective(m), 4), "f1": round(m["f1"], 4),
                         "object_dice": round(m["object_dice"], 4),
                         "object_hausdorff": round(m["object_hausdorff"], 2)})
    tta_rows = [r for r in rows if r["stage"] == "tta"]
    mode = max(modes, key=lambda md: max(r["objective"] for r in tta_rows if r["mode"] == md))
    # 2) thresholds of each method on that mode
    found = search(cached_by_mode, [(mode, m, grids[m]) for m in methods], workers)
    for md, method, params, obj in found:
        m = score(cached_by_mode[md], method, params)
        rows.append({"stage": "grid", "mode": md, "method": method,
                     "params": json.dumps(params, sort_keys=True), "objective": round(obj, 4),
                     "f1": round(m["f1"], 4), "object_dice": round(m["object_dice"], 4),
                     "object_hausdorff": round(m["object_hausdorff"], 2)})
    _, method, params, obj = max(found, key=lambda r: r[3])
    items = cached_by_mode[mode]
    pooled = score(items, method, params, split_gt=True)
    per_fold = []
    for i in range(len(fj["folds"])):
        fi = [it for it in items if fold_of[it[0]] == i]
        if fi:
            per_fold.append({"fold": i, "n_images": len(fi),
                             **{k: v for k, v in score(fi, method, params, split_gt=True).items()
                                if k in ("f1", "object_dice", "object_hausdorff")}})
    spread = {k: {"mean": float(np.mean([f[k] for f in per_fold])),
                  "std": float(np.std([f[k] for f in per_fold], ddof=1))
                  if len(per_fold) > 1 else 0.0}
              for k in ("f1", "object_dice", "object_hausdorff")}
    summary = {"n_images": len(items), "folds": len(fj["folds"]), "tta": mode,
               "method": method, "postprocess": params, "objective": obj,
               "oof_pooled_split_gt": {k: pooled[k] for k in ("f1", "object_dice",
                                                              "object_hausdorff")},
               "per_fold": per_fold, "fold_spread": spread,
               "note": "chosen and scored on the same out-of-fold predictions (thresholds "
                       "and TTA mode are a handful of choices; the figures are slightly "
                       "optimistic)"}
    with atomic_path(out / "selection.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ckpt.save_json(out / "summary.json", summary)
    return summary
