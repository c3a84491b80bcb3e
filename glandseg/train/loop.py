"""The training engine: an epoch loop of small hook methods (nnU-Net style).

``Trainer(TrainConfig).fit()`` trains any registered model on a GlaS-like folder, validates
each epoch on held-out patients with the official GlaS metrics, keeps ``best`` (by pooled
validation object Dice) and ``last`` checkpoints, logs ``metrics.csv``, ``curves.png`` and
``train.log`` in the run folder, and resumes exactly where a killed run stopped
(after the last finished epoch).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from glandseg import GlandsegError
from glandseg.data.dataset import GlasDataset, patient_split, validation_item
from glandseg.data.transforms import AugmentConfig, train_transform
from glandseg.infer.predictor import Predictor, pick_device
from glandseg.models import registry
from glandseg.train import checkpoint as ckpt
from glandseg.train import finetune, runstate
from glandseg.train.config import DEFAULTS, TrainConfig, resume_conflicts
from glandseg.train.seeding import EpochSampler, SeededItems, worker_init

log = logging.getLogger(__name__)

CSV_FIELDS = ["epoch", "stage", "lr", "train_loss", "val_loss", "val_f1", "val_object_dice",
              "val_object_hausdorff", "seconds"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_task(cfg: dict):
    """The training task (targets, collate, loss) for a model config."""
    if cfg["task"] == "instances":
        from glandseg.models.maskrcnn import InstanceTask

        if (cfg.get("train") or {}).get("consistency"):
            raise GlandsegError("--consistency is for the U-Nets (unet, unet-lite0), not "
                                f"{cfg.get('model')}; leave it out")
        return InstanceTask(cfg)
    from glandseg.train.tasks import DenseTask

    scale = cfg["preprocess"]["scale"]
    train = cfg.get("train") or {}
    dice = train.get("loss_weights", {}).get("dice", 0.5)
    return DenseTask(cfg["task"], boundary_width=max(1, round(4 * scale)), sigma=10 * scale,
                     dice_weight=dice, consistency=float(train.get("consistency", 0.0)))


def _make_optimizer(stage: dict, params) -> torch.optim.Optimizer:
    name = stage["optimizer"].lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=stage["lr"], momentum=stage.get("momentum", 0.9),
                               weight_decay=stage["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=stage["lr"], weight_decay=stage["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=stage["lr"], weight_decay=stage["weight_decay"])
    raise GlandsegError(f"unknown optimizer {name!r}; use sgd, adam or adamw")


def _make_scheduler(stage: dict, opt: torch.optim.Optimizer, steps_per_epoch: int,
                    time_progress=None):
    """Warm-up then cosine decay over the stage's steps; with ``time_progress`` (a function
    returning the spent fraction of a time budget) the decay follows whichever runs out
    first, so a run cut by ``--max-minutes`` still ends at a low learning rate."""
    total = stage["epochs"] * steps_per_epoch
    warm = min(2 * steps_per_epoch, total // 10)
    if stage.get("schedule", "constant") != "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        t = (s - warm) / max(1, total - warm)
        if time_progress is not None:
            t = max(t, time_progress())
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


class Trainer:
    """Hooks, in call order: :meth:`setup_run`, :meth:`setup_model`, :meth:`setup_data`,
    then per stage :meth:`setup_stage`, and per epoch :meth:`train_epoch`,
    :meth:`validate`, :meth:`on_epoch_end`; finally :meth:`finish`.

    ``callbacks``: functions ``(trainer, row)`` called after each epoch is committed (``row``
    as in ``metrics.csv``; ``val_object_dice`` is -1 on epochs not validated); an exception
    they raise (e.g. a search pruning the trial) stops training after that epoch."""

    def __init__(self, tc: TrainConfig, callbacks=()) -> None:
        self.tc = tc
        self.callbacks = list(callbacks)
        self.run = Path(tc.out)
        self.device = pick_device(tc.device)
        self.history: list[dict] = []
        self.best = -1.0
        self.commit: runstate.Commit | None = None  # the last epoch committed to disk
        self.start_epoch = 0
        self.t0 = time.time()
        self.elapsed_before = 0.0
        self._lock = runstate.RunLock(self.run)

    def elapsed(self) -> float:
        """Seconds of training so far, including the runs this one resumes."""
        return self.elapsed_before + time.time() - self.t0

    # -- setup ------------------------------------------------------------------------
    def setup_run(self) -> None:
        tc = self.tc
        if tc.resume:
            runstate.read_commit(self.run)  # a one-line error when there is nothing to resume
            with self._writing():
                self._lock.acquire()
            self.cfg = _load_run_config(self.run)
            differ = resume_conflicts(tc, self.cfg["train"])
            if differ:
                raise GlandsegError(f"--resume continues {self.run} with its own settings; "
                                    f"given: {'; '.join(differ)}: leave them out (only "
                                    "--max-minutes and --device may change) or train a new run")
            if tc.max_minutes is not None:  # a resumed run may get a new time budget
                self.cfg["train"]["max_minutes"] = tc.max_minutes
        else:
            runstate.refuse_existing(self.run)
            self.cfg = self._initial_config()
            with self._writing():
                self.run.mkdir(parents=True, exist_ok=True)
                self._lock.acquire()
            if tc.scale is not None:
                self.cfg["preprocess"]["scale"] = tc.scale
            if tc.tile is not None:  # inference tile side at the working scale (checked)
                self.cfg["tiling"] = {"tile": tc.tile, "overlap": max(32, tc.tile // 8),
                                      "batch_size": 1}
            self.cfg["model_args"].update(tc.model_args)
            self.cfg["train"] = {**tc.as_dict(), "stages": tc.resolved_stages()}
            self.cfg["train"]["model"] = self.cfg["model"]
            if tc.init:
                import hashlib

                w = Path(self._init_weights)
                self.cfg["train"]["init_weights"] = str(w)
                self.cfg["train"]["init_weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
            self.save_config()
        with self._writing():
            fh = _LogFile(self.run / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.setLevel(logging.INFO)
        pkg = logging.getLogger("glandseg")
        _drop_stale_handlers(pkg)
        pkg.addHandler(fh)
        self._fh, self._old_level = fh, pkg.level
        shown = pkg.getEffectiveLevel()
        if shown > logging.INFO:  # train.log gets INFO even without a CLI (or with -q) ...
            pkg.setLevel(logging.INFO)
            # ... while the console keeps showing only what it did (-q: warnings)
            self._console = _Forward(shown)
            pkg.addHandler(self._console)
            self._old_propagate, pkg.propagate = pkg.propagate, False
        seed_everything(self.cfg["train"]["seed"])

    def setup_data(self) -> None:
        t = self.cfg["train"]
        samples = finetune.training_samples(t["data"])  # GlaS train_N, else any annotated
        if t.get("val_images") is not None:  # a resumed run keeps its own split
            val_names = set(t["val_images"])
            self.train_samples = [s for s in samples if s.name not in val_names
                                  or t.get("val_on_train")]
            self.val_samples = [s for s in samples if s.name in val_names]
        else:
            finetune.apply_small_set(t, len(samples), DEFAULTS, given=self.tc.given)
            self.train_samples, self.val_samples = patient_split(samples, t["val_fraction"],
                                                                 t["seed"])
            if not self.val_samples:
                self.val_samples, t["val_on_train"] = list(self.train_samples), True
                log.warning("no images held out: validating on the %d training images (the "
                            "'best' checkpoint follows the training fit)", len(samples))
        self.task = make_task(self.cfg)
        scale = self.cfg["preprocess"]["scale"]
        aug = train_transform(AugmentConfig(crop=t["crop"], robust=bool(t.get("robust")),
                                            robust_p=float(t.get("robust_p", 0.5)),
                                            strength=t.get("augment_strength", 1.0)))
        self.train_ds = GlasDataset(self.train_samples, aug, scale=scale, cache=True,
                                    target_fn=self.task.target_fn, repeats=t["repeats"],
                                    mpp=self.cfg["preprocess"].get("mpp"))
        self.cfg["train"]["train_images"] = [s.name for s in self.train_samples]
        self.cfg["train"]["val_images"] = [s.name for s in self.val_samples]
        self.save_config()
        mpp = self.cfg["preprocess"].get("mpp")  # images with another resolution: resampled
        self.val_data = [validation_item(s, mpp) for s in self.val_samples]
        log.info("training on %d images, validating on %d (patients %s)", len(self.train_samples),
                 len(self.val_samples), sorted({s.patient for s in self.val_samples}, key=str))

    def _initial_config(self) -> dict:
        """The model config a new run starts from: the registry default of ``--model``, or
        with ``init`` the trained model's own config (its architecture must be ``--model``'s
        family when both are given)."""
        tc = self.tc
        if not tc.init:
            return registry.default_config(tc.model)
        from glandseg.models.store import resolve_model

        try:
            cfg, weights = resolve_model(tc.init)
        except GlandsegError as exc:
            raise GlandsegError(f"--init: {exc}") from exc
        if weights is None:
            raise GlandsegError(f"--init {tc.init}: has no trained weights to start from; give a "
                                "bundled model (glas-unet), a run folder or a .safetensors file")
        if tc.model != cfg["model"] and ("model" in tc.given or tc.model != DEFAULTS["model"]):
            raise GlandsegError(f"--init {tc.init} is a {cfg['model']} model, not {tc.model}; "
                                "drop --model (the architecture comes from --init)")
        self._init_weights = weights
        return {k: v for k, v in cfg.items()
                if k in ("model", "task", "preprocess", "model_args", "tiling", "postprocess")}

    def setup_model(self) -> None:
        t = self.cfg["train"]
        init = t.get("init")
        self.model = registry.build_model(self.cfg, pretrained=t["pretrained"] and not init)
        if init and not self.tc.resume:  # a resumed run loads its own weights
            from glandseg.models.store import load_weights

            load_weights(self.model, self._init_weights)
            log.info("starting from the weights of %s (%s)", init, self._init_weights)
        if t.get("freeze_encoder"):
            finetune.freeze_encoder(self.model)
        self.model.to(self.device)
        self.net = self.model  # what the loss calls (DistributedTrainer: the DDP wrapper)
        pre = self.cfg["preprocess"]
        self.mean = torch.tensor(pre["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"], device=self.device).view(1, 3, 1, 1)
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None

    def setup_stage(self, stage: dict) -> None:
        t = self.cfg["train"]
        g = torch.Generator()
        g.manual_seed(t["seed"] + len(self.history))
        self.loader = self.make_loader(stage, g)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(stage, params)
        budget = self.cfg["train"].get("max_minutes")
        progress = None
        if budget is not None:
            progress = (lambda: self.elapsed() / (60 * budget)) if budget > 0 else (lambda: 1.0)
        self.scheduler = _make_scheduler(stage, self.optimizer, len(self.loader), progress)

    def make_loader(self, stage: dict, generator: torch.Generator) -> DataLoader:
        """The stage's training loader. Epoch ``e`` shuffles and augments from ``(seed, e)``
        alone (:mod:`glandseg.train.seeding`: one seed per crop, set in whichever worker
        builds it), so a resumed run draws what an uninterrupted one does, with any number
        of workers; ``generator`` only feeds the DataLoader's own worker seeds, which no
        draw uses, so it is not part of the committed state."""
        t = self.cfg["train"]
        return DataLoader(
            SeededItems(self.train_ds), batch_size=stage["batch_size"], drop_last=True,
            sampler=EpochSampler(len(self.train_ds), t["seed"]),
            num_workers=t["workers"], collate_fn=self.task.collate, generator=generator,
            persistent_workers=t["workers"] > 0,
            worker_init_fn=worker_init,
        )

    def save_config(self) -> None:
        with self._writing():
            ckpt.save_json(self.run / "config.json", self.cfg)

    @contextlib.contextmanager
    def _writing(self):
        """Turn an ``OSError`` of writing into the run folder (a full disk, a read-only or
        forbidden folder) into a one-line error naming the folder; every file is written
        to a temporary name and renamed, so the last committed epoch stays intact."""
        try:
            yield
        except OSError as exc:
            what = exc.strerror or type(exc).__name__
            where = f" ({exc.filename})" if exc.filename else ""
            if runstate.has_commit(self.run):
                kept = (f"the last complete epoch ({runstate.read_commit(self.run).epoch}) is "
                        "kept; fix that, then continue with glandseg train --resume --out "
                        f"{self.run}")
            else:
                kept = "no epoch was completed; fix that and start again"
            raise GlandsegError(f"{self.run}: cannot write the run folder: {what}{where}; "
                                f"{kept}") from exc

    # -- epoch hooks ---------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        losses = []
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # this epoch's order and crops: from (seed, epoch)
            sampler.set_epoch(epoch)
        total = sum(s["epochs"] for s in self.cfg["train"]["stages"])
        # one bar per epoch over its steps, on a terminal; -q (TQDM_DISABLE=1) hides it (read
        # here: tqdm itself reads its TQDM_* variables once, when it is imported)
        quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{total}", unit="step", leave=False,
                   dynamic_ncols=True, disable=True if quiet else None)
        for batch in bar:
            batch = _to_device(batch, self.device)
            with torch.autocast(self.device.type, enabled=self.use_amp):
                loss = self.task.loss(self.net, batch, self.mean, self.std)
            if not torch.isfinite(loss):
                raise GlandsegError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        return float(np.mean(losses)) if losses else float("nan")

    def predictor(self, cfg: dict | None = None) -> Predictor:
        return Predictor(self.model, cfg or self.cfg, self.device)

    @torch.no_grad()
    def validate(self) -> dict:
        """Official pooled metrics (and loss, for dense models) on the validation patients."""
        from glandseg.metrics.score import score_pairs

        self.model.eval()
        pred = self.predictor()
        items, losses = [], []
        for name, image, truth in self.val_data:
            if self.cfg["task"] == "instances":
                labels = pred.predict(image)
            else:
                probs = pred.predict_proba(image)
                labels = pred.postprocess(probs)
                vl = self.task.val_loss(probs, truth, self.cfg) if hasattr(self.task, "val_loss") else None
                if vl is not None:
                    losses.append(vl)
            items.append((name, labels, truth))
        m = next(iter(score_pairs(items).values()))["pooled"]
        return {"val_loss": float(np.mean(losses)) if losses else float("nan"),
                "val_f1": m["f1"], "val_object_dice": m["object_dice"],
                "val_object_hausdorff": m["object_hausdorff"]}

    def on_epoch_end(self, row: dict, stage_i: int, epoch: int) -> None:
        """Commit the epoch (weights, optimizer/scheduler/RNG state, best weights when this
        validation is the best so far) as one set (:mod:`glandseg.train.runstate`), then
        write the logs."""
        self.history.append(row)
        improved = row["val_object_dice"] > self.best
        if improved:
            self.best = row["val_object_dice"]
        with self._writing():
            self.commit = runstate.commit_epoch(
                self.run, self.model, self.optimizer, self.scheduler, self.scaler,
                epoch=epoch + 1, stage=stage_i, history=self.history, elapsed=self.elapsed(),
                best=self.best, improved=improved, previous=self.commit)
            self._write_logs()
        log.info("epoch %d: loss %.4f | val F1 %.3f Dice %.3f Hausdorff %.1f%s", epoch + 1,
                 row["train_loss"], row["val_f1"], row["val_object_dice"],
                 row["val_object_hausdorff"], " (best)" if improved else "")
        for cb in self.callbacks:
            cb(self, row)

    def _write_logs(self) -> None:
        from glandseg.data.io import atomic_path

        with atomic_path(self.run / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(self.history)
        try:
            from glandseg.report.figures import training_curves

            training_curves(self.history, self.run / "curves.png")
        except Exception as exc:  # a plotting problem must not stop training
            log.warning("could not draw curves: %s", exc)

    def finish(self) -> None:
        """Reload the best weights, tune post-processing on validation, save the config."""
        if self.commit is not None:  # the committed best weights (checksum verified)
            runstate.load_weights(self.commit, "best" if "best" in self.commit.files else "last",
                                  self.model)
        if self.cfg["train"].get("tune_postprocess", True):
            if self.cfg["task"] == "instances":
                from glandseg.infer.instances import tune_instances as tune
            else:
                from glandseg.train.tune import tune_postprocess as tune

            self.model.eval()
            params, score = tune(self.predictor(), self.val_data)
            self.cfg["postprocess"] = params
            self.cfg.setdefault("validation", {})["tuned_object_dice"] = score
            log.info("post-processing tuned on validation: %s (object Dice %.4f)", params, score)
        self.cfg.setdefault("validation", {})["best"] = max(
            self.history, key=lambda r: r["val_object_dice"], default=None)
        self.save_config()

    # -- driver ---------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train (see the class docstring); returns the run folder. A new run that fails
        (or is interrupted) before its first epoch is committed leaves no run folder behind:
        what this call created is removed, a folder that existed before is kept."""
        made = None if self.tc.resume or not self._owns_run_folder() else _Made(self.run)
        try:
            self.setup_run()
        except BaseException:
            if made is not None and self._lock.held:
                made.undo()
            self._lock.release()
            raise
        try:  # from here on train.log is open: closed whatever happens
            self.setup_model()  # first: a missing weights download fails before data loading
            self.setup_data()
            self._check_options()
            start_stage, start_epoch = (0, 0)
            if self.tc.resume:
                with self._writing():
                    start_stage, start_epoch = self._resume()
            self._train_stages(start_stage, start_epoch)
            with self._writing():
                self.finish()
        except BaseException:
            self._restore_logging()
            if made is not None:
                made.undo()
            raise
        finally:
            self._restore_logging()
            self._lock.release()
        return self.run

    def _owns_run_folder(self) -> bool:
        """Whether this process creates (and may remove) the run folder."""
        return True

    def _restore_logging(self) -> None:
        """Close ``train.log`` and put the package logger back as :meth:`setup_run` found it
        (once; a second call does nothing)."""
        fh = getattr(self, "_fh", None)
        if fh is None:
            return
        pkg = logging.getLogger("glandseg")
        pkg.removeHandler(fh)
        console = getattr(self, "_console", None)
        if console is not None:
            pkg.removeHandler(console)
            pkg.propagate = self._old_propagate
            self._console = None
        pkg.setLevel(self._old_level)
        fh.close()
        self._fh = None

    def _resume(self) -> tuple[int, int]:
        """Load the last complete epoch: only what ``checkpoint.json`` names, checksums
        verified (leftovers of a killed commit are deleted, last/best.safetensors
        republished). Returns ``(stage, epoch)`` to continue after."""
        self.commit = runstate.resume(self.run)
        _check_resumable(self.commit, self.cfg["train"]["stages"])
        runstate.load_weights(self.commit, "last", self.model)
        self.history, self.best = list(self.commit.history), self.commit.best
        self.elapsed_before = self.commit.elapsed
        self.t0 = time.time()
        self._write_logs()  # metrics.csv may lag the commit when the kill came between
        log.info("resuming after epoch %d", self.commit.epoch)
        return self.commit.stage, self.commit.epoch

    def _train_stages(self, start_stage: int, start_epoch: int) -> None:
        """Run the stages' epochs after ``start_epoch`` (optimizer, scheduler and loader
        RNG restored from the commit when resuming in the middle of a stage)."""
        budget = self.cfg["train"].get("max_minutes")
        epoch_base = 0
        restore = start_epoch > 0
        for si, stage in enumerate(self.cfg["train"]["stages"]):
            n = stage["epochs"]
            if epoch_base + n <= start_epoch:
                epoch_base += n
                continue
            self.setup_stage(stage)
            if restore:  # once, at the first stage run: RNG always, the rest if mid-stage
                # (the data need no state: epoch e draws from (seed, e), see make_loader)
                mid = si == start_stage and start_epoch > epoch_base
                runstate.restore_state(self.commit, self.optimizer if mid else None,
                                       self.scheduler if mid else None, self.scaler)
                restore = False
            if self._run_stage(si, stage, epoch_base, start_epoch, budget):
                break
            epoch_base += n

    def _check_options(self) -> None:
        """What only the model and the data can check, before training: the crop must fit
        the network's stride (a one-line error), and a batch larger than the training crops
        of an epoch is lowered to them (said once, in the log and in ``config.json``'s
        ``train.notes``; the stages record the batch size used)."""
        t = self.cfg["train"]
        stride = int(getattr(self.model, "stride", 1))
        if t["crop"] % stride:
            fit = max(stride, t["crop"] // stride * stride)
            raise GlandsegError(f"--crop {t['crop']} is not a multiple of {stride}, the stride "
                                f"of {self.cfg['model']}; use e.g. --crop {fit}")
        n = len(self.train_ds)
        asked = sorted({s["batch_size"] for s in t["stages"] if s["batch_size"] > n})
        if asked:
            for stage in t["stages"]:
                stage["batch_size"] = min(stage["batch_size"], n)
            note = (f"batch size {'/'.join(map(str, asked))} lowered to {n}, the training crops "
                    f"of an epoch ({len(self.train_samples)} images x {t['repeats']} repeats); "
                    "raise --repeats to keep a larger batch")
            t.setdefault("notes", []).append(note)
            log.warning("%s", note)
            self.save_config()

    def _run_stage(self, si: int, stage: dict, epoch_base: int, start_epoch: int,
                   budget: float | None) -> bool:
        """Run the epochs of one stage; returns True when the time budget stops training."""
        for e in range(stage["epochs"]):
            epoch = epoch_base + e
            if epoch < start_epoch:
                continue
            t = time.time()
            train_loss = self.train_epoch(epoch)
            row = {"epoch": epoch + 1, "stage": si + 1,
                   "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss}
            last = e == stage["epochs"] - 1
            if (epoch + 1) % self.cfg["train"]["val_every"] == 0 or last:
                row.update(self.validate())
            else:
                row.update({k: float("nan") for k in CSV_FIELDS[4:8]})
                row["val_object_dice"] = -1.0
            row["seconds"] = round(time.time() - t, 1)
            self.on_epoch_end(row, si, epoch)
            if budget is not None and self.elapsed() / 60 >= budget:
                log.info("time budget of %s min reached after epoch %d", budget, epoch + 1)
                return True
        return False


def _check_resumable(commit: runstate.Commit, stages: list) -> None:
    """The committed history and stage must be this run's: rows with the ``metrics.csv``
    fields, and the stage the one that holds the committed epoch (else the optimizer state
    would silently not be restored); one-line errors."""
    where = commit.run / runstate.MANIFEST
    fix = "delete the run folder (or choose another --out) and train without --resume"
    for i, row in enumerate(commit.history):
        if set(row) != set(CSV_FIELDS):
            odd = sorted(set(row) ^ set(CSV_FIELDS))
            raise GlandsegError(f"{where}: history row {i + 1} has other fields than "
                                f"metrics.csv's ({', '.join(odd[:3])}); {fix}")
    try:
        ends = np.cumsum([int(s["epochs"]) for s in stages]).tolist()
        if not ends:
            raise ValueError("no stages")
    except (TypeError, KeyError, ValueError) as exc:
        raise GlandsegError(f"{commit.run / 'config.json'}: no stages with their epochs; "
                            f"{fix}") from exc
    if commit.epoch > ends[-1]:
        raise GlandsegError(f"{where}: epoch {commit.epoch} is past the run's {ends[-1]} "
                            f"epochs; {fix}")
    stage = next(i for i, end in enumerate(ends) if commit.epoch <= end)
    if commit.stage != stage or commit.history[-1]["stage"] != stage + 1:
        raise GlandsegError(f"{where}: epoch {commit.epoch} belongs to stage {stage} (0-based) "
                            f"of the run, not {commit.stage}; {fix}")


def _load_run_config(run: Path) -> dict:
    """The ``config.json`` of a run to resume; one-line errors when it is not one."""
    fix = "delete the run folder (or choose another --out) and train without --resume"
    cfg = ckpt.load_json(run / "config.json", hint=fix)
    train = cfg.get("train")
    if not isinstance(train, dict) or not isinstance(train.get("stages"), list):
        raise GlandsegError(f"{run / 'config.json'}: no training arguments (\"train\" with "
                            f"\"stages\"), so the run cannot be resumed; {fix}")
    return cfg


class _Made:
    """What a new run is about to create: the outermost missing folder of the run's path,
    or, when the run folder exists, its current entries (kept by :meth:`undo`)."""

    def __init__(self, run: Path) -> None:
        self.run = run
        missing = [p for p in (run, *run.parents) if not p.exists()]
        self.top = missing[-1] if missing else None
        self.before = {p.name for p in run.iterdir()} if run.is_dir() else set()

    def undo(self) -> None:
        """Remove what was created since, unless an epoch was committed (a run to resume)."""
        if runstate.has_commit(self.run):
            return
        if self.top is not None:
            shutil.rmtree(self.top, ignore_errors=True)
            return
        with contextlib.suppress(OSError):
            for p in self.run.iterdir():
                if p.name in self.before:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


class _LogFile(logging.FileHandler):
    """``train.log``: a record that cannot be written (a full disk) is dropped without the
    logging module's traceback; the next checkpoint write reports the problem in one line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        pass


def _drop_stale_handlers(pkg: logging.Logger) -> None:
    """Remove the log handlers an earlier trainer of this process left behind (one that
    stopped before it could close them): its ``train.log`` would get this run's lines and
    its console forwarder would print them twice."""
    stale = [h for h in pkg.handlers if isinstance(h, _LogFile | _Forward)]
    for h in stale:
        pkg.removeHandler(h)
        h.close()
    if any(isinstance(h, _Forward) for h in stale):
        pkg.propagate = True


class _Forward(logging.Handler):
    """Hands records at ``level`` and above to the root logger's handlers: the console
    output the package logger had before training raised its level for ``train.log``."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().callHandlers(record)


def _to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
