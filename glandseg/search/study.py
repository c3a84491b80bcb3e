"""The Optuna study of ``glandseg search``: storage, sampler, pruner, trials and workers.

One *trial* = one real training run (:class:`glandseg.train.loop.Trainer`, the engine of
``glandseg train``) in ``STUDY_DIR/trials/trial-NNNN/``, validated every epoch on the held-out
patients with the official GlaS object Dice (pooled); each epoch's value is reported to
Optuna so that the Hyperband or median pruner can stop a bad trial early. The trial's value
is its best validation object Dice (after post-processing tuning with ``tune_postprocess``).
A trial that crashes (out of memory, NaN loss, ...) is recorded as failed with its reason
(user attribute ``fail_reason``) and the search goes on.

Counting: ``trials`` is the number of *finished* trials (complete or pruned) the study
should hold. A worker starts a trial only while finished + running trials are fewer, and a
trial that finds, once created, that ``trials`` lower-numbered trials already run or have
finished (two workers raced) ends at once as failed (``surplus``): the study never holds
more than ``trials`` finished trials, and the same command run again continues until it
holds exactly that many. A trial whose worker died (``kill -9``, a lost machine) stays
"running" in the storage: on this machine a later worker sees that its process is gone and
marks it failed; elsewhere Optuna's heartbeat does after ``heartbeat_s`` x 3 seconds.

Storage: SQLite ``STUDY_DIR/study.db`` by default; any Optuna RDB URL
(``postgresql://user@host/db``) lets workers on several machines join one study. The
settings that make trials comparable (model, space, epochs, scale, ...) are stored with the
study; joining it with other settings is an error.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing as mp
import os
import shutil
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from glandseg import GlandsegError
from glandseg.search import require_optuna
from glandseg.search.outputs import Counts, counts, write_results
from glandseg.search.space import SearchSpace, load_space

log = logging.getLogger(__name__)

SAMPLERS = ("random", "tpe")
PRUNERS = ("hyperband", "median", "none")
#: Study user attribute holding the settings every trial must share.
SETTINGS_ATTR = "glandseg_settings"
POLL_S = 5.0


@dataclass
class SearchConfig:
    """Everything ``glandseg search`` accepts. ``trials``: finished trials the study should
    hold; ``epochs``, ``scale``, ``repeats``, ``val_fraction``, ``seed``, ``pretrained``,
    ``model_args``: the fixed training settings of every trial (a space may override
    epochs, scale and repeats); ``loader_workers``: DataLoader processes per trial;
    ``workers``: trial processes on this machine; ``timeout_minutes``: the search's time
    limit: no trial starts after it, and running trials stop after the epoch that passes it
    (their time budget is what is left); ``max_failures``: stop after this many crashed trials (default: ``trials``);
    ``enqueue``: parameter sets to try first (e.g. a recipe, as a baseline)."""

    model: str = "unet-lite0"
    data: str = ""
    out: str = "search"
    sampler: str = "tpe"
    pruner: str = "hyperband"
    trials: int = 20
    minutes_per_trial: float | None = None
    storage: str | None = None
    study_name: str | None = None
    space: str | None = None
    stages: int = 1
    workers: int = 1
    epochs: int = 20
    scale: float | None = None
    repeats: int = 2
    val_fraction: float = 0.2
    device: str = "auto"
    seed: int = 0
    loader_workers: int = 2
    pretrained: bool = True
    model_args: dict = field(default_factory=dict)
    tune_postprocess: bool = False
    keep_weights: bool = False
    timeout_minutes: float | None = None
    max_failures: int | None = None
    heartbeat_s: int = 60
    enqueue: list[dict] = field(default_factory=list)
    #: ``stages=2``: trials of the broad stage 1 (default: half of ``trials``); the rest
    #: sample the space narrowed around stage 1's best (:meth:`SearchSpace.narrowed`).
    stage1_trials: int | None = None
    #: ``stages=2``: width of each stage-2 range as a share of stage 1's (log width for log
    #: ranges), centred on stage 1's best value.
    narrow_factor: float = 0.25

    def stage1_count(self) -> int:
        """Trials of stage 1 (all of them with one stage)."""
        if self.stages < 2:
            return self.trials
        return self.stage1_trials if self.stage1_trials else math.ceil(self.trials / 2)

    @property
    def study_dir(self) -> Path:
        return Path(self.out)

    def storage_url(self) -> str:
        if self.storage:
            return self.storage
        return f"sqlite:///{(self.study_dir / 'study.db').resolve()}"

    def name(self) -> str:
        return self.study_name or self.study_dir.resolve().name


# --- storage, study, sampler, pruner ----------------------------------------------------

def _storage(cfg: SearchConfig):
    optuna = require_optuna()
    url = cfg.storage_url()
    kwargs: dict = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 120}}  # several workers: wait for the lock
    else:
        kwargs = {"pool_pre_ping": True}
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                      heartbeat_interval=cfg.heartbeat_s,
                                                      grace_period=3 * cfg.heartbeat_s)
            except Exception as exc:  # two workers creating a new database at once: the
                # loser's schema insert fails (UNIQUE alembic_version); the schema is there now
                if "IntegrityError" not in type(exc).__name__ or attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as exc:
        raise GlandsegError(f"--storage {_safe_url(url)}: its database driver is not installed "
                            f"({exc}); for PostgreSQL: pip install 'psycopg[binary]'") from exc
    except Exception as exc:  # sqlalchemy: bad URL, server down, ...
        raise GlandsegError(f"--storage {_safe_url(url)}: cannot open the study storage "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); check the URL "
                            "and that the database server runs") from exc


def _safe_url(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        head, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{head}://{cred.split(':', 1)[0]}@{host}"
    return url


def _sampler(cfg: SearchConfig, seed: int):
    optuna = require_optuna()
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "tpe":
        startup = max(3, min(10, cfg.trials // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    raise GlandsegError(f"unknown sampler {cfg.sampler!r}; use {' or '.join(SAMPLERS)}")


def _pruner(cfg: SearchConfig, space: SearchSpace):
    optuna = require_optuna()
    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    if cfg.pruner == "median":
        # steps are epochs 1, 2, ...: no pruning on the first epoch
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if cfg.pruner == "hyperband":
        epochs = _max_epochs(cfg, space)
        # a time budget may end trials early: then learn the resource from finished trials
        max_resource = "auto" if cfg.minutes_per_trial is not None else max(epochs, 2)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource,
                                              reduction_factor=3)
    raise GlandsegError(f"unknown pruner {cfg.pruner!r}; use {', '.join(PRUNERS)}")


def _max_epochs(cfg: SearchConfig, space: SearchSpace) -> int:
    for p in space.params:
        if p.name == "epochs":
            return int(p.fixed if p.kind == "fixed" else max(p.choices) if p.kind == "choice"
                       else p.high)
    return cfg.epochs


def settings(cfg: SearchConfig, space: SearchSpace) -> dict:
    """What every trial of one study must share (stored with the study)."""
    return {"model": cfg.model, "space": space.to_json(), "epochs": cfg.epochs,
            "scale": cfg.scale, "repeats": cfg.repeats, "val_fraction": cfg.val_fraction,
            "seed": cfg.seed, "pretrained": cfg.pretrained, "model_args": cfg.model_args,
            "tune_postprocess": cfg.tune_postprocess, "minutes_per_trial": cfg.minutes_per_trial,
            "stages": cfg.stages,
            # only where set: studies made before these options keep their settings
            **({"stage1_trials": cfg.stage1_trials} if cfg.stage1_trials else {}),
            **({"narrow_factor": cfg.narrow_factor} if cfg.narrow_factor != 0.25 else {})}


def open_study(cfg: SearchConfig, space: SearchSpace, storage=None, sampler=None,
               pruner=None):
    """Create the study, or load it and check that it was made with the same settings."""
    optuna = require_optuna()
    storage = storage or _storage(cfg)
    study = optuna.create_study(study_name=cfg.name(), storage=storage, load_if_exists=True,
                                direction="maximize", sampler=sampler, pruner=pruner)
    want = settings(cfg, space)
    have = study.user_attrs.get(SETTINGS_ATTR)
    if have is None:
        study.set_user_attr(SETTINGS_ATTR, want)
    elif have != want:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise GlandsegError(
            f"study {cfg.name()!r} in {_safe_url(cfg.storage_url())} was made with other "
            f"settings ({', '.join(diff)}: {have.get(diff[0])!r}, now {want.get(diff[0])!r}); "
            "repeat its options to continue it, or choose another --out / --study-name")
    return study


# --- counting and dead workers -----------------------------------------------------------

def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def fail_dead_trials(study, storage) -> int:
    """Mark failed the running trials of this machine whose worker process is gone (or is
    another process that reuses its id); returns how many."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get("host") != host or "pid" not in a:
            continue
        started = _process_started(int(a["pid"]))
        if started is not None and abs(started - float(a.get("pid_started", 0))) < 1.0:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_kind", "worker died")
            storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                        f"its worker process (pid {a['pid']}) died")
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            n += 1
            log.warning("trial %d: its worker (pid %s) died; marked failed", t.number, a["pid"])
        except Exception:  # another worker marked it first
            continue
    return n


# --- one trial ---------------------------------------------------------------------------

class _Surplus(Exception):
    pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if "out of memory" in text.lower() or name == "OutOfMemoryError":
        return f"out of memory: {text[:300]}"
    return f"{name}: {text[:300]}" if text else name


class Objective:
    """One trial: sample the parameters, train through :class:`~glandseg.train.loop.Trainer`
    reporting each epoch's validation object Dice, return the best."""

    def __init__(self, cfg: SearchConfig, space: SearchSpace,
                 deadline: float | None = None) -> None:
        self.cfg, self.space, self.deadline = cfg, space, deadline
        self.trials_dir = cfg.study_dir / "trials"

    def stage_space(self, trial) -> tuple[int, SearchSpace]:
        """Stage 1 (the whole space) for the first ``stage1_count()`` trials (half by
        default); with ``stages=2`` the rest sample a space narrowed around the best complete
        stage-1 trial (``narrow_factor``)."""
        import optuna
        from optuna.trial import TrialState

        if self.cfg.stages < 2:
            return 1, self.space
        n1 = self.cfg.stage1_count()
        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        while True:
            others = [t for t in trial.study.get_trials(deepcopy=False)
                      if t.number != trial.number and t.user_attrs.get("stage") == 1]
            if sum(t.state in live for t in others) < n1:
                return 1, self.space
            if not any(t.state == TrialState.RUNNING for t in others):
                break
            # stage 1 filled up while this trial was being created (another worker's last
            # stage-1 trial still runs): narrow only once stage 1's best is final
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(trial.study)  # a dead worker's trial
            time.sleep(POLL_S)
        done = [t for t in others if t.state == TrialState.COMPLETE]
        if not done:
            return 1, self.space
        best = max(done, key=lambda t: t.value)
        return 2, self.space.narrowed(best.params, self.cfg.narrow_factor)

    def surplus(self, trial) -> bool:
        from optuna.trial import TrialState

        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        ahead = sum(1 for t in trial.study.get_trials(deepcopy=False)
                    if t.state in live and (t.number < trial.number
                                            or t.state != TrialState.RUNNING)
                    and t.number != trial.number)
        return ahead >= self.cfg.trials

    def train_config(self, tp: dict, run: Path):
        from glandseg.train.loop import TrainConfig

        c = self.cfg
        tp = dict(tp)
        model_args = {**c.model_args, **tp.pop("model_args", {})}
        budget = c.minutes_per_trial
        if self.deadline is not None:  # the search's end: the trial stops after that epoch
            left = max(0.0, (self.deadline - time.time()) / 60)
            budget = left if budget is None else min(budget, left)
        args = dict(model=c.model, data=c.data, out=str(run), epochs=c.epochs, scale=c.scale,
                    repeats=c.repeats, val_fraction=c.val_fraction, val_every=1,
                    max_minutes=budget, device=c.device, seed=c.seed,
                    workers=c.loader_workers, pretrained=c.pretrained,
                    tune_postprocess=c.tune_postprocess, model_args=model_args)
        args.update(tp)
        return TrainConfig(**args)

    def _run_dir(self, number: int) -> Path:
        run = self.trials_dir / f"trial-{number:04d}"
        k = 2
        while run.exists():  # a folder of an earlier study of the same name: kept
            run = self.trials_dir / f"trial-{number:04d}-{k}"
            k += 1
        return run

    def _drop_weights(self, run: Path) -> None:
        if self.cfg.keep_weights or not run.is_dir():
            return
        for p in run.glob("*.safetensors"):
            p.unlink(missing_ok=True)
        (run / "checkpoint.json").unlink(missing_ok=True)
        shutil.rmtree(run / "checkpoint", ignore_errors=True)

    def __call__(self, trial) -> float:
        optuna = require_optuna()
        from glandseg.train.loop import Trainer

        t0 = time.time()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("pid_started", _process_started(os.getpid()) or 0.0)
        if self.surplus(trial):
            trial.set_user_attr("fail_kind", "surplus")
            trial.set_user_attr("fail_reason", f"not run: the study already holds "
                                               f"{self.cfg.trials} trials (a race of workers)")
            raise _Surplus("surplus trial")
        try:
            stage, space = self.stage_space(trial)
            trial.set_user_attr("stage", stage)
            # when its space was fixed (a stage-2 trial may wait for stage 1 first)
            trial.set_user_attr("sampled_at", time.time())
            values = space.suggest(trial)
            tp = space.train_params(values)
        except Exception as exc:  # counted: a sampling bug must not loop forever
            trial.set_user_attr("fail_kind", "error")
            trial.set_user_attr("fail_reason", f"sampling: {_reason(exc)}")
            raise
        run = self._run_dir(trial.number)
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("train", tp)
        tc = self.train_config(tp, run)
        rows: list[dict] = []

        def report(trainer, row: dict) -> None:
            rows.append(row)
            v = row["val_object_dice"]
            if v is None or v < 0 or not math.isfinite(v):
                return
            trial.report(float(v), step=int(row["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} (validation "
                                         f"object Dice {v:.4f})")

        def done(**attrs) -> None:
            trial.set_user_attr("epochs", len(rows))
            trial.set_user_attr("minutes", round((time.time() - t0) / 60, 3))
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            self._drop_weights(run)

        trainer = Trainer(tc, callbacks=[report])
        try:
            trainer.fit()
        except optuna.TrialPruned:
            done()
            raise
        except Exception as exc:
            done(fail_kind="error", fail_reason=_reason(exc))
            _free_gpu()
            raise
        except KeyboardInterrupt:
            done(fail_kind="interrupted", fail_reason="interrupted (Ctrl-C)")
            raise
        scores = [r["val_object_dice"] for r in rows if r["val_object_dice"] >= 0]
        if self.cfg.tune_postprocess and "tuned_object_dice" in trainer.cfg.get("validation", {}):
            value = float(trainer.cfg["validation"]["tuned_object_dice"])
        elif scores:
            value = float(max(scores))
        else:
            done(fail_kind="error", fail_reason="no validated epoch")
            raise GlandsegError("no validated epoch")
        if not math.isfinite(value):
            done(fail_kind="error", fail_reason=f"validation object Dice is {value}")
            raise GlandsegError(f"validation object Dice is {value}")
        done(best_epoch=int(max(rows, key=lambda r: r["val_object_dice"])["epoch"]))
        return value


def _free_gpu() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _log_trial(study, t) -> None:
    from optuna.trial import TrialState

    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    if t.state == TrialState.COMPLETE:
        log.info("trial %d: validation object Dice %.4f in %.1f min (%s)", t.number, t.value,
                 t.user_attrs.get("minutes", 0.0), shown)
    elif t.state == TrialState.PRUNED:
        log.info("trial %d: pruned after %s epochs (%s)", t.number, t.user_attrs.get("epochs"),
                 shown)
    elif t.user_attrs.get("fail_kind") != "surplus":
        log.warning("trial %d failed: %s", t.number, t.user_attrs.get("fail_reason", "?"))


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --- workers -----------------------------------------------------------------------------

def work(cfg: SearchConfig, index: int = 0, deadline: float | None = None) -> Counts:
    """One worker: run trials until the study holds ``cfg.trials`` finished ones (or the
    deadline passes, or too many trials crashed). Returns the final counts."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = search_space(cfg)
    storage = _storage(cfg)
    probe = open_study(cfg, space, storage)
    seed = (cfg.seed * 1_000_003 + 7919 * index + len(probe.trials)) % 2**32
    study = open_study(cfg, space, storage, _sampler(cfg, seed), _pruner(cfg, space))
    objective = Objective(cfg, space, deadline)
    max_failures = cfg.max_failures if cfg.max_failures is not None else max(3, cfg.trials)
    if index == 0 and cfg.enqueue and not study.trials:
        for params in cfg.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    while True:
        fail_dead_trials(study, storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        c = counts(study)
        if c.finished >= cfg.trials:
            break
        if c.failed >= max_failures:
            raise GlandsegError(f"{c.failed} trials failed (see fail_reason in "
                                f"{cfg.study_dir / 'trials.csv'}); fix the cause, or raise "
                                "--max-failures, and run the same command again")
        if deadline is not None and time.time() >= deadline:
            log.info("time limit reached: no new trial (%d of %d finished)", c.finished,
                     cfg.trials)
            break
        if c.finished + c.running >= cfg.trials:
            time.sleep(POLL_S)  # the last trials run elsewhere: wait, they may fail
            continue
        if stage1_pending(study, cfg):
            time.sleep(POLL_S)  # stage 2 narrows around stage 1's best: wait for all of it
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                       callbacks=[_log_trial])
        write_results(study, cfg)
    return counts(study)


def stage1_pending(study, cfg: SearchConfig) -> bool:
    """With ``stages=2``: stage 1 has all its trials but some still run elsewhere (another
    worker); a stage-2 trial started now would narrow around a best that may change."""
    from optuna.trial import TrialState

    if cfg.stages < 2:
        return False
    ones = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("stage") == 1]
    live = [t for t in ones if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                          TrialState.RUNNING)]
    return (len(live) >= cfg.stage1_count()
            and any(t.state == TrialState.RUNNING for t in live))


def _work_entry(cfg: SearchConfig, index: int, deadline: float | None, level: int,
                threads: int) -> None:
    """A worker process (``--workers K``): one-line errors, exit status 1."""
    logging.basicConfig(level=level, format=f"%(levelname)s worker {index}: %(message)s")
    logging.getLogger("glandseg").setLevel(level)
    try:
        import torch

        torch.set_num_threads(threads)
        work(cfg, index, deadline)
    except GlandsegError as exc:
        print(f"glandseg search (worker {index}): error: {exc}", file=sys.stderr)
        sys.exit(1)


def search_space(cfg: SearchConfig, say: bool = False) -> SearchSpace:
    """The space of ``cfg`` (:func:`~glandseg.search.space.load_space`) fitted to its data:
    batch sizes above the training crops of an epoch (training images after the patient
    split x the fewest repeats a trial may get) lowered to that number, so that no trial
    asks for more than an epoch holds (``say``: log it)."""
    from glandseg.data.dataset import patient_split
    from glandseg.data.discover import discover

    space = load_space(cfg.model, cfg.space, cfg.pretrained)
    if space.lowest("batch_size") is None:  # not searched: the trainer's default applies
        return space
    samples = discover(cfg.data, splits=("train",))
    train, _ = patient_split(samples, cfg.val_fraction, cfg.seed)
    repeats = space.lowest("repeats") or cfg.repeats
    crops = max(1, len(train) * int(repeats))
    fitted = space.capped("batch_size", crops)
    if say and fitted != space:
        log.warning("batch sizes of the search space lowered to at most %d, the training crops "
                    "of an epoch (%d images x %d repeats)", crops, len(train), int(repeats))
    return fitted


def check_inputs(cfg: SearchConfig) -> SearchSpace:
    """One-line errors before any trial: options, the data folder, the space."""
    from glandseg.data.discover import discover
    from glandseg.models import registry

    names = [n for n in registry.names() if n not in registry.BUNDLED]
    if cfg.model not in names:
        raise GlandsegError(f"unknown model {cfg.model!r}; choose one of {', '.join(names)}")
    if cfg.sampler not in SAMPLERS:
        raise GlandsegError(f"unknown sampler {cfg.sampler!r}; use {' or '.join(SAMPLERS)}")
    if cfg.pruner not in PRUNERS:
        raise GlandsegError(f"unknown pruner {cfg.pruner!r}; use {', '.join(PRUNERS)}")
    if cfg.trials < 1 or cfg.workers < 1 or cfg.stages not in (1, 2):
        raise GlandsegError("--trials and --workers must be at least 1, --stages 1 or 2")
    if cfg.stage1_trials and (cfg.stages < 2 or not 1 <= cfg.stage1_trials < cfg.trials):
        raise GlandsegError(f"--stage1-trials {cfg.stage1_trials} needs --stages 2 and must be "
                            f"between 1 and --trials - 1 ({cfg.trials - 1})")
    if not 0 < cfg.narrow_factor <= 1:
        raise GlandsegError(f"--narrow-factor {cfg.narrow_factor} must be in (0, 1]")
    if not cfg.data:
        raise GlandsegError("--data is required: the GlaS folder the trials train on")
    if not discover(cfg.data, splits=("train",)):
        raise GlandsegError(f"{cfg.data}: no training images (train_N + train_N_anno)")
    return search_space(cfg, say=True)


def run_search(cfg: SearchConfig) -> Counts:
    """Run (or continue) the search of ``cfg``: ``cfg.workers`` trial processes on this
    machine, then ``best.json``, ``trials.csv`` and the plots in ``cfg.out``."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = check_inputs(cfg)
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).resolve()))
    study = open_study(cfg, space)  # created once, before the workers race to
    deadline = time.time() + 60 * cfg.timeout_minutes if cfg.timeout_minutes else None
    log.info("study %r (%s): %d of %d trials finished", cfg.name(),
             _safe_url(cfg.storage_url()), counts(study).finished, cfg.trials)
    if cfg.workers == 1:
        try:
            result = work(cfg, 0, deadline)
        finally:
            write_results(study, cfg, plots=True)
        return result
    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    level = logging.getLogger("glandseg").getEffectiveLevel()
    procs = [ctx.Process(target=_work_entry, args=(cfg, i, deadline, level, threads),
                         name=f"glandseg-search-{i}") for i in range(cfg.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode]
    result = counts(study)
    write_results(study, cfg, plots=True)
    if bad:
        raise GlandsegError(f"worker {bad[0][0]} stopped with exit status {bad[0][1]} "
                            "(its error is above); run the same command again to continue")
    return result
