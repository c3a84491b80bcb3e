"""Random search versus TPE + Hyperband with the same compute budget, on the U-Net.

Two ``glandseg search`` studies of ``unet-lite0`` on GlaS, run at the same time (two
processes, one torch thread each: whatever else loads the machine loads both alike), each
given the same wall-clock
budget (``--minutes``, ``glandseg search --timeout-minutes``: no trial starts after it and
the running one stops after the epoch that passes it; each trial runs ``--epochs``), with
the same search space, fixed settings and validation patients (``patient_split(..., 0.2,
seed 0)``: the 18 images of patients 4, 5, 6, 11, 14, 15, the bundled model's; Test A/B are
never read):

- ``random``: random sampling, no pruning (the study's protocol, one stage);
- ``tpe-hyperband``: TPE (Bayesian optimisation) with Hyperband pruning on the per-epoch
  validation object Dice.

Then the bundled ``glas-unet-v2`` recipe's hyper-parameters (AdamW lr 1e-3, weight decay
1e-4, batch 8, default augmentation and loss, lite0) are trained once in the same setting,
as a baseline. Result: best validation object Dice (official, pooled) against minutes spent,
``benchmarks/results/search_benchmark.png``, ``search_benchmark.json`` and
``README_search.md``; each study's ``trials.csv``, ``best.json`` and Optuna plots are copied
to ``benchmarks/results/search/``. The studies themselves live under ``--work`` (default
``runs/bench-search``; run again, a finished study is reused).

    nohup nice -n 5 .venv/bin/python benchmarks/bench_search.py --data ../shared/glas \\
        [--minutes 8] [--epochs 2] [--trial-minutes M] [--scale 0.25] [--quick] &
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_GLAS = HERE.parent.parent / "shared" / "glas"
STRATEGIES = {"random": ("random", "none"), "tpe-hyperband": ("tpe", "hyperband")}
#: The default unet-lite0 space, with crops and batches sized for a CPU at scale 0.25 and
#: the encoder fixed to lite0 (lite2 costs ~2x per epoch on a CPU).
SPACE = {"batch_size": {"choices": [4, 8]}, "crop": {"choices": [64, 96, 128]}, "encoder": "lite0"}
#: glas-unet-v2's hyper-parameters (glandseg/train/presets.py), as constants; its 512 px
#: crop at scale 1.0 is 128 px at the benchmark's scale 0.25 (the same field of view).
RECIPE = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 8, "crop": 128,
          "augment_strength": 1.0, "loss_dice": 0.5, "encoder": "lite0"}
PUBLISHED_RECIPE_DICE = 0.831  # glas-unet v2: tuned validation object Dice (H200, 6.4 min)


def run_study(name: str, args, space: dict, sampler: str, pruner: str, trials: int,
              minutes: float | None, run: bool = True):
    from glandseg.search.space import load_space
    from glandseg.search.study import SearchConfig, open_study, run_search

    space_file = Path(args.work) / f"{name}-space.json"
    space_file.parent.mkdir(parents=True, exist_ok=True)
    space_file.write_text(json.dumps(space, indent=1))
    cfg = SearchConfig(model="unet-lite0", data=str(args.data), out=str(Path(args.work) / name),
                       sampler=sampler, pruner=pruner, trials=trials, epochs=args.epochs,
                       scale=args.scale, repeats=args.repeats,
                       minutes_per_trial=args.trial_minutes, space=str(space_file),
                       loader_workers=args.loader_workers, device=args.device, seed=args.seed,
                       timeout_minutes=minutes)
    t0 = time.time()
    if run:
        run_search(cfg)
    wall = (time.time() - t0) / 60
    study = open_study(cfg, load_space(cfg.model, cfg.space, cfg.pretrained))
    return cfg, study, wall


def _study_process(name: str, args, sampler: str, pruner: str) -> None:
    """One study in its own process (both run at once: the same machine load for both)."""
    import torch

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads() // len(STRATEGIES)))
    run_study(name, args, SPACE, sampler, pruner, args.trials, args.minutes)


def study_minutes(rows: list[dict]) -> float:
    return max((r["minutes_at_end"] for r in rows), default=0.0)


def trial_table(study) -> list[dict]:
    trials = [t for t in study.get_trials() if t.datetime_start is not None]
    if not trials:
        return []
    start = min(t.datetime_start for t in trials)
    rows = []
    for t in trials:
        end = t.datetime_complete or datetime.now()
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "epochs": t.user_attrs.get("epochs"),
                     "minutes_at_end": round((end - start).total_seconds() / 60, 3),
                     "params": t.params, "fail_reason": t.user_attrs.get("fail_reason")})
    return rows


def best_curve(rows: list[dict]) -> tuple[list[float], list[float]]:
    """Best complete value so far at each trial end (minutes since the study started)."""
    xs, ys, best = [0.0], [float("nan")], float("nan")
    for r in sorted(rows, key=lambda r: r["minutes_at_end"]):
        if r["state"] == "COMPLETE" and r["value"] is not None:
            best = r["value"] if best != best else max(best, r["value"])
        xs.append(r["minutes_at_end"])
        ys.append(best)
    return xs, ys


def plot(results: dict, recipe: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = {"random": "tab:blue", "tpe-hyperband": "tab:orange"}
    for name, r in results.items():
        xs, ys = best_curve(r["trials"])
        ax.step(xs, ys, where="post", color=colors[name], lw=2, label=f"{name} (best so far)")
        for t in r["trials"]:
            marker = {"COMPLETE": "o", "PRUNED": "x"}.get(t["state"], "s")
            y = t["value"] if t["value"] is not None else 0.0
            ax.plot(t["minutes_at_end"], y, marker, color=colors[name], alpha=0.6, ms=6)
    if recipe is not None:
        ax.axhline(recipe, color="k", ls="--", lw=1,
                   label=f"glas-unet-v2 recipe, same setting ({recipe:.3f})")
    ax.set_xlabel("minutes since the study started (trial ends)")
    ax.set_ylabel("validation object Dice (official, pooled)")
    ax.set_title("unet-lite0 on GlaS: random search vs TPE + Hyperband, same budget\n"
                 "o complete, x pruned (value at pruning), s failed", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def copy_outputs(cfg, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("trials.csv", "best.json", "history.png", "importance.png", "parallel.png"):
        src = Path(cfg.out) / name
        if src.exists():
            shutil.copy2(src, dest / name)


def write_readme(summary: dict, path: Path) -> None:
    m = summary["machine"]
    s = summary["settings"]
    lines = [
        "# Search benchmark: random search vs TPE + Hyperband (same budget)", "",
        "`nohup nice -n 5 .venv/bin/python benchmarks/bench_search.py --data ../shared/glas "
        f"--minutes {s['minutes']} --epochs {s['epochs']} --scale {s['scale']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, load {m['load_1min']} at "
        f"the start (shared with other jobs), torch {m['torch']}, no GPU.", "",
        f"Model `unet-lite0` (ImageNet encoder), scale {s['scale']}, {s['repeats']} pass(es) "
        f"over the 67 training images per epoch, {s['epochs']} epochs per trial"
        + (f" (at most {s['trial_minutes']} min)" if s["trial_minutes"] else "")
        + f", {s['minutes']} min per study (no trial starts after it, and the running one "
        "stops after the epoch that passes it). Validation: the 18 "
        "images of the held-out patients 4, 5, 6, 11, 14, 15 (the bundled model's); no test "
        "image was read.", "",
        "| study | trials (complete / pruned / failed) | minutes | best validation object Dice |",
        "|---|---|---|---|",
    ]
    for name, r in summary["studies"].items():
        c = [sum(t["state"] == k for t in r["trials"]) for k in ("COMPLETE", "PRUNED", "FAIL")]
        best = f"{r['best']:.4f}" if r["best"] is not None else "-"
        lines.append(f"| {name} | {c[0]} / {c[1]} / {c[2]} | {r['minutes']:.1f} | {best} |")
    rec = summary.get("recipe")
    if rec is not None:
        lines.append(f"| glas-unet-v2 recipe's hyper-parameters, same setting | 1 | "
                     f"{summary['recipe_minutes']:.1f} | {rec:.4f} |")
    lines += ["", "The two studies share their sampler seed, so their first trials (TPE's random "
              "start-up) have the same parameters: their values differ by up to 0.01 between the "
              "two studies, the run-to-run noise of a trial here.",
              "", f"For scale: the bundled glas-unet (this recipe at full resolution, 8 epochs "
              f"of 20 passes on an H200) reached {PUBLISHED_RECIPE_DICE} (after post-processing "
              "tuning) on the same validation images; a CPU budget of minutes cannot approach "
              "it, and with this few trials the ranking of the two strategies is noise-prone.",
              "", "![search benchmark](results/search_benchmark.png)", ""]
    for name, r in summary["studies"].items():
        if r["best_params"]:
            lines.append(f"Best {name} parameters: `{json.dumps(r['best_params'])}`  ")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_GLAS))
    ap.add_argument("--work", default="runs/bench-search")
    ap.add_argument("--minutes", type=float, default=8.0, help="budget per study")
    ap.add_argument("--trial-minutes", type=float, default=None,
                    help="time budget per trial (default: none, --epochs only)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--trials", type=int, default=15,
                    help="at most this many per study (TPE samples at random for a third)")
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 short trial each")
    ap.add_argument("--report-only", action="store_true",
                    help="redraw the figure and README_search.md from search_benchmark.json")
    args = ap.parse_args()
    if args.report_only:
        summary = json.loads((RESULTS / "search_benchmark.json").read_text())
        plot(summary["studies"], summary["recipe"], RESULTS / "search_benchmark.png")
        write_readme(summary, HERE / "README_search.md")
        return 0
    if args.quick:
        args.minutes, args.trial_minutes, args.epochs, args.trials = 0.1, 0.1, 1, 1
        args.work = str(Path(args.work) / "quick")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    info = machine()
    print(json.dumps(info))
    summary = {"machine": info, "settings": {k: getattr(args, k) for k in
               ("minutes", "trial_minutes", "epochs", "scale", "repeats", "trials", "seed")},
               "space": SPACE, "studies": {}}
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_study_process, args=(name, args, sampler, pruner))
             for name, (sampler, pruner) in STRATEGIES.items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    for name, (sampler, pruner) in STRATEGIES.items():
        cfg, study, _ = run_study(name, args, SPACE, sampler, pruner, args.trials,
                                  args.minutes, run=False)
        rows = trial_table(study)
        wall = study_minutes(rows)
        done = [t for t in rows if t["state"] == "COMPLETE"]
        best = max(done, key=lambda t: t["value"]) if done else None
        summary["studies"][name] = {
            "sampler": sampler, "pruner": pruner, "minutes": round(wall, 2), "trials": rows,
            "best": best["value"] if best else None, "best_params": best["params"] if best else None}
        if not args.quick:
            copy_outputs(cfg, RESULTS / "search" / name)
        print(name, json.dumps({k: v for k, v in summary["studies"][name].items()
                                if k != "trials"}))
    cfg, study, _ = run_study("recipe", args, RECIPE, "random", "none", 1, None)
    rows = trial_table(study)
    rec = [t for t in rows if t["state"] == "COMPLETE"]
    summary["recipe"] = rec[0]["value"] if rec else None
    summary["recipe_minutes"] = round(study_minutes(rows), 2)
    summary["published_recipe_dice"] = PUBLISHED_RECIPE_DICE
    print("recipe", summary["recipe"])
    out = RESULTS if not args.quick else Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_benchmark.json").write_text(json.dumps(summary, indent=1, default=str))
    plot(summary["studies"], summary["recipe"], out / "search_benchmark.png")
    if not args.quick:
        write_readme(summary, HERE / "README_search.md")
    print(f"written: {out / 'search_benchmark.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
