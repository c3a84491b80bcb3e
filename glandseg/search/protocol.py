"""The study's tuning protocol as one command (``glandseg search --protocol NAME``).

The 2020 study tuned each network in four steps; :func:`run_protocol` runs them in one
study folder, resumably (each step is skipped when its result is already there):

1. **broad random search**: ``stage1_trials`` trials of ``epochs`` epochs each, sampled
   from the whole space (:func:`glandseg.search.space.default_space` or ``--space``);
2. **narrow random search**: the remaining ``trials - stage1_trials`` trials, sampled from
   the space narrowed around stage 1's best trial (:meth:`SearchSpace.narrowed`: each
   float/integer range shrinks to ``narrow_factor`` of its width, on the log scale for log
   ranges, centred on the best value and kept inside the stage-1 range; ordered numeric
   choices keep the best value and its two neighbours; other choices only the best).
   Workers wait until every stage-1 trial has finished before the first stage-2 trial, so
   the narrowing is around stage 1's final best. Steps 1 and 2 are one Optuna study
   (``stages=2``, ``STUDY_DIR/study.db``), each trial marked with its ``stage``;
3. **long training** of the winner: ``best.json``'s ``glandseg train`` parameters for
   ``long_epochs`` epochs (its optimizer, learning rate, weight decay, batch, crop, loss
   weights, augmentation, architecture; cosine schedule);
4. **babysitting**: ``babysit_epochs`` more epochs in the same run at the winner's learning
   rate x ``babysit_lr_factor``, constant; the run keeps the checkpoint of its best
   validation epoch over both phases (the study watched validation and kept the best).

Steps 3-4 are one two-stage ``glandseg train`` run in ``STUDY_DIR/final/`` (its
``config.json`` records both stages; ``glandseg train --resume --out STUDY_DIR/final``
continues it). Every selection (trial values, best epoch, post-processing tuning) uses the
validation patients held out of the training set (``val_fraction``, by patient): Test A/B
are never read. ``protocol.json`` records each step's best validation object Dice, its
trials and minutes.

Protocols (:data:`PROTOCOLS`): ``study`` (the above: random 50 + 50 trials x 20 epochs, no
pruner) and ``tpe-hyperband`` (the alternative: 100 TPE trials pruned by Hyperband, then
the same long training and babysitting).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from glandseg import GlandsegError
from glandseg.data.io import atomic_path
from glandseg.search.study import SearchConfig

log = logging.getLogger(__name__)

#: Protocol name → SearchConfig fields and final-training settings. Options left at their
#: defaults on the command line take these values.
PROTOCOLS: dict[str, dict] = {
    "study": {"sampler": "random", "pruner": "none", "stages": 2, "trials": 100,
              "stage1_trials": 50, "epochs": 20, "long_epochs": 100, "babysit_epochs": 30,
              "babysit_lr_factor": 0.05},
    "tpe-hyperband": {"sampler": "tpe", "pruner": "hyperband", "stages": 1, "trials": 100,
                      "epochs": 20, "long_epochs": 100, "babysit_epochs": 30,
                      "babysit_lr_factor": 0.05},
}
FINAL_KEYS = ("long_epochs", "babysit_epochs", "babysit_lr_factor")


@dataclass
class ProtocolConfig:
    """The search (steps 1-2, or TPE + Hyperband) and the final training (steps 3-4).
    ``long_epochs`` 0: no final training. ``final_minutes``: time budget of the final run
    (the cosine of step 3 follows it), None: none."""

    search: SearchConfig
    long_epochs: int = 100
    babysit_epochs: int = 30
    babysit_lr_factor: float = 0.05
    final_minutes: float | None = None
    name: str = ""

    @property
    def final_dir(self) -> Path:
        return self.search.study_dir / "final"


def protocol_config(name: str, search: SearchConfig, **final) -> ProtocolConfig:
    """``PROTOCOLS[name]`` applied to ``search`` and ``final`` (``long_epochs`` ...) where
    those are ``None`` or the SearchConfig default."""
    if name not in PROTOCOLS:
        raise GlandsegError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    defaults = SearchConfig()
    changes = {k: v for k, v in p.items() if k not in FINAL_KEYS
               and getattr(search, k) == getattr(defaults, k)}
    search = dataclasses.replace(search, **changes)
    if search.stages == 2 and search.stage1_trials and search.stage1_trials >= search.trials:
        search = dataclasses.replace(search, stage1_trials=None)  # --trials given: halves
    fin = {k: (final.get(k) if final.get(k) is not None else p[k]) for k in FINAL_KEYS}
    return ProtocolConfig(search, name=name, final_minutes=final.get("final_minutes"), **fin)


def final_stages(train: dict, long_epochs: int, babysit_epochs: int,
                 babysit_lr_factor: float) -> list[dict]:
    """The training stages of steps 3-4 from ``best.json``'s ``train`` parameters: the
    winner's optimizer settings for ``long_epochs`` (cosine), then ``babysit_epochs`` at
    ``lr x babysit_lr_factor`` (constant). ``babysit_epochs`` 0: step 3 only."""
    base = {"optimizer": train.get("optimizer", "adamw"), "lr": float(train.get("lr", 1e-3)),
            "weight_decay": float(train.get("weight_decay", 1e-4)),
            "batch_size": int(train.get("batch_size", 8)),
            "momentum": float(train.get("momentum", 0.9))}
    stages = [{**base, "epochs": int(long_epochs), "schedule": "cosine"}]
    if babysit_epochs > 0:
        stages.append({**base, "lr": base["lr"] * babysit_lr_factor,
                       "epochs": int(babysit_epochs), "schedule": "constant"})
    return stages


def final_train_config(pc: ProtocolConfig, best: dict):
    """The :class:`~glandseg.train.loop.TrainConfig` of steps 3-4 (``best``: best.json)."""
    from glandseg.train.loop import TrainConfig

    c = pc.search
    train = dict(best["train"])
    stages = final_stages(train, pc.long_epochs, pc.babysit_epochs, pc.babysit_lr_factor)
    for k in ("optimizer", "lr", "weight_decay", "batch_size", "momentum", "schedule"):
        train.pop(k, None)
    train["epochs"] = sum(s["epochs"] for s in stages)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(train) - known)
    if unknown:
        raise GlandsegError(f"{c.study_dir / 'best.json'}: unknown training parameter "
                            f"{unknown[0]!r}; rerun the search with this version of glandseg")
    return TrainConfig(**{**train, "data": c.data, "out": str(pc.final_dir),
                          "device": c.device, "workers": c.loader_workers, "val_every": 1,
                          "tune_postprocess": True, "max_minutes": pc.final_minutes,
                          "stages": stages})


def _study_summary(study, cfg: SearchConfig) -> dict:
    from optuna.trial import TrialState

    out: dict = {}
    trials = study.get_trials(deepcopy=False)
    for stage in sorted({t.user_attrs.get("stage") for t in trials} - {None}):
        ts = [t for t in trials if t.user_attrs.get("stage") == stage]
        done = [t for t in ts if t.state == TrialState.COMPLETE]
        best = max(done, key=lambda t: t.value) if done else None
        out[f"stage{stage}"] = {
            "trials": len(ts), "complete": len(done),
            "pruned": sum(t.state == TrialState.PRUNED for t in ts),
            "failed": sum(t.state == TrialState.FAIL
                          and t.user_attrs.get("fail_kind") == "error" for t in ts),
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "trial_minutes": round(sum(float(t.user_attrs.get("minutes") or 0) for t in ts), 3),
        }
    return out


def _final_summary(rows: list[dict], stages: list[dict], run: Path) -> dict:
    phases = {}
    for i, name in enumerate(("long", "babysit")[:len(stages)], start=1):
        vals = [r["val_object_dice"] for r in rows if r["stage"] == i
                and r["val_object_dice"] is not None and r["val_object_dice"] >= 0]
        best_i = max(range(len(vals)), key=vals.__getitem__) if vals else None
        phases[name] = {"epochs": stages[i - 1]["epochs"], "lr": stages[i - 1]["lr"],
                        "schedule": stages[i - 1]["schedule"],
                        "best_val_object_dice": vals[best_i] if vals else None}
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    val = cfg.get("validation", {})
    return {"run": str(run), "phases": phases, "validation": val}


def _read_rows(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        v = r.get("val_object_dice")
        out.append({"epoch": int(r["epoch"]), "stage": int(r["stage"]),
                    "val_object_dice": float(v) if v not in (None, "") else None})
    return out


def run_protocol(pc: ProtocolConfig) -> dict:
    """Steps 1-4 (see the module docstring); returns and writes ``protocol.json``.
    Run again, it continues the search, then resumes or skips the final training."""
    from glandseg.search.outputs import best_json
    from glandseg.search.study import open_study, run_search, search_space
    from glandseg.train import runstate
    from glandseg.train.loop import Trainer

    c = pc.search
    if pc.long_epochs < 0 or pc.babysit_epochs < 0 or not 0 < pc.babysit_lr_factor <= 1:
        raise GlandsegError("--long-epochs and --babysit-epochs must be >= 0 and "
                            "--babysit-lr-factor in (0, 1]")
    t0 = time.time()
    counts = run_search(c)
    search_minutes = (time.time() - t0) / 60
    c = dataclasses.replace(c, data=str(Path(c.data).resolve()))
    study = open_study(c, search_space(c))
    best = best_json(study, c)
    if best is None:
        raise GlandsegError(f"{c.study_dir}: no complete trial to train further; see "
                            f"fail_reason in {c.study_dir / 'trials.csv'}")
    doc: dict = {
        "protocol": pc.name or "custom", "model": c.model,
        "search": {"sampler": c.sampler, "pruner": c.pruner, "stages": c.stages,
                   "trials": c.trials, "stage1_trials": c.stage1_count(),
                   "narrow_factor": c.narrow_factor, "epochs": c.epochs,
                   "workers": c.workers, "device": c.device,
                   "complete": counts.complete, "pruned": counts.pruned,
                   "failed": counts.failed, "wall_minutes_this_call": round(search_minutes, 3),
                   **_study_summary(study, c)},
        "best_trial": {"trial": best["trial"], "value": best["value"],
                       "params": best["params"], "train": best["train"]},
        "selection": "validation patients held out of the training images "
                     f"(val_fraction {c.val_fraction}, seed {c.seed}); Test A/B not read",
    }
    if pc.long_epochs > 0:
        tc = final_train_config(pc, best)
        run = pc.final_dir
        t1 = time.time()
        done = False
        if (run / "checkpoint.json").is_file():
            commit = runstate.read_commit(run)
            done = commit.epoch >= tc.epochs
            if not done:
                log.info("final training: resuming %s after epoch %d", run, commit.epoch)
                tc = dataclasses.replace(tc, resume=True)
        if not done:
            log.info("final training of trial %d: %d + %d epochs in %s", best["trial"],
                     pc.long_epochs, pc.babysit_epochs, run)
            Trainer(tc).fit()
        doc["final"] = {**_final_summary(_read_rows(run), tc.stages, run),
                        "wall_minutes_this_call": round((time.time() - t1) / 60, 3)}
    with atomic_path(c.study_dir / "protocol.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return doc


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON: {type(v).__name__}")
