"""What a search leaves in ``STUDY_DIR``, each file written to a temporary name and renamed:

- ``best.json``: the best complete trial: its value (validation object Dice), its sampled
  ``params`` and, under ``"train"``, the ``glandseg train`` parameters that reproduce it
  (``glandseg train --params best.json --data DIR --out RUN``); ``epochs`` is the number
  of epochs the trial ran;
- ``trials.csv``: one row per trial: number, state, value, stage, epochs, minutes, fail
  reason, run folder, then the parameters;
- ``history.png``, ``importance.png``, ``parallel.png``: Optuna's matplotlib plots of the
  optimisation history, the parameter importances (fANOVA) and parallel coordinates
  (each drawn when the study has enough complete trials).
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from glandseg.data.io import atomic_path

log = logging.getLogger(__name__)

BASE_COLUMNS = ["number", "state", "value", "stage", "epochs", "minutes", "fail_reason",
                "run", "datetime_start", "datetime_complete"]
PLOTS = ("history", "importance", "parallel")


@dataclass
class Counts:
    """Trials of a study by state."""

    complete: int = 0
    pruned: int = 0
    running: int = 0
    failed: int = 0  # crashed trials (not surplus, not dead workers)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def counts(study) -> Counts:
    """The study's trials by state (crashed: failed with ``fail_kind`` ``error``)."""
    from optuna.trial import TrialState

    c = Counts()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get("fail_kind") == "error":
            c.failed += 1
    return c


def best_trial(study):
    """The complete trial with the highest value, or ``None``."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def best_json(study, cfg) -> dict | None:
    """The content of ``best.json`` (see the module docstring), or ``None``."""
    t = best_trial(study)
    if t is None:
        return None
    s = study.user_attrs.get("glandseg_settings") or {}
    train = {"model": cfg.model, "epochs": int(t.user_attrs.get("epochs") or cfg.epochs),
             "repeats": cfg.repeats, "val_fraction": cfg.val_fraction, "seed": cfg.seed,
             "pretrained": cfg.pretrained}
    if cfg.scale is not None:
        train["scale"] = cfg.scale
    tp = dict(t.user_attrs.get("train") or {})
    model_args = {**cfg.model_args, **tp.pop("model_args", {})}
    train.update(tp)
    if "epochs" in tp:  # searched epochs: the ones the trial ran
        train["epochs"] = int(t.user_attrs.get("epochs") or tp["epochs"])
    if model_args:
        train["model_args"] = model_args
    c = counts(study)
    return {
        "study": study.study_name, "trial": t.number, "value": t.value,
        "metric": "best validation object Dice (official GlaS, pooled over the held-out "
                  "patients)" + (", after post-processing tuning" if cfg.tune_postprocess
                                 else ""),
        "best_epoch": t.user_attrs.get("best_epoch"), "minutes": t.user_attrs.get("minutes"),
        "params": t.params, "train": train,
        "trials": {"complete": c.complete, "pruned": c.pruned, "failed": c.failed},
        "search": s,
    }


def write_best(study, cfg) -> Path | None:
    doc = best_json(study, cfg)
    if doc is None:
        return None
    path = Path(cfg.out) / "best.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        reason = a.get("fail_reason", "")
        if t.state.name == "FAIL" and not reason:
            reason = "no heartbeat: its worker was lost"
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "stage": a.get("stage", ""), "epochs": a.get("epochs", ""),
               "minutes": a.get("minutes", ""), "fail_reason": reason, "run": a.get("run", ""),
               "datetime_start": t.datetime_start.isoformat(timespec="seconds")
               if t.datetime_start else "",
               "datetime_complete": t.datetime_complete.isoformat(timespec="seconds")
               if t.datetime_complete else ""}
        row.update(t.params)
        rows.append(row)
    return rows


def write_trials_csv(study, out: str | Path) -> Path:
    rows = trial_rows(study)
    params = sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
    path = Path(out) / "trials.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=BASE_COLUMNS + params, restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def write_plots(study, out: str | Path) -> list[Path]:
    """Optuna's matplotlib plots (those the study has enough complete trials for)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    funcs = {"history": ovm.plot_optimization_history, "importance": ovm.plot_param_importances,
             "parallel": ovm.plot_parallel_coordinate}
    written = []
    for name, fn in funcs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            path = Path(out) / f"{name}.png"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
            plt.close(fig)
            written.append(path)
        except (ValueError, RuntimeError, ZeroDivisionError, optuna.exceptions.OptunaError,
                IndexError) as exc:
            log.info("no %s plot: %s", name, str(exc).splitlines()[0] if str(exc) else exc)
            plt.close("all")
    return written


def write_results(study, cfg, plots: bool = False) -> None:
    """``best.json`` and ``trials.csv`` (and the plots with ``plots``) in ``cfg.out``."""
    write_trials_csv(study, cfg.out)
    write_best(study, cfg)
    if plots:
        write_plots(study, cfg.out)
