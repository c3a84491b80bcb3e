"""``glandseg search``: an Optuna hyper-parameter search over the training engine."""

from __future__ import annotations

import argparse
import json
import os

from glandseg.cli import float_in, int_in
from glandseg.cli.train_cmd import DefaultsHelpFormatter
from glandseg.models import registry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="tune training hyper-parameters with Optuna (trials = training runs)",
        formatter_class=DefaultsHelpFormatter,
        description="Search learning rate, weight decay, batch size, crop, loss weights, "
                    "augmentation strength and encoder for MODEL on DIR. Each trial is a "
                    "glandseg train run (STUDY_DIR/trials/), scored by the official validation "
                    "object Dice on held-out patients and pruned early when it falls behind. "
                    "The study lives in STUDY_DIR/study.db (or --storage): the same command "
                    "run again continues it, and workers on several machines may share one. "
                    "Writes best.json (for glandseg train --params), trials.csv and plots.",
    )
    p.add_argument("--model", default="unet-lite0",
                   choices=[n for n in registry.names() if n not in registry.BUNDLED],
                   help="architecture the trials train")
    p.add_argument("--data", required=True, help="GlaS folder (flat or train/ test/ layout)")
    p.add_argument("--out", required=True, metavar="STUDY_DIR",
                   help="study folder (created, or continued)")
    p.add_argument("--sampler", choices=["random", "tpe"], default="tpe",
                   help="random search, or TPE (Bayesian optimisation; default)")
    p.add_argument("--pruner", choices=["hyperband", "median", "none"], default="hyperband",
                   help="stop bad trials early on their per-epoch validation score")
    p.add_argument("--trials", type=int_in(1, 100_000), default=20,
                   help="finished trials (complete or pruned) the study should hold; "
                        "run again after an interruption, it continues until it holds them")
    p.add_argument("--minutes-per-trial", type=float_in(0, 1e6), default=None,
                   help="time budget of each training run (the cosine schedule follows it)")
    p.add_argument("--epochs", type=int_in(1, 100_000), default=20,
                   help="epochs per trial (the pruner's resource)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna database URL, e.g. postgresql://user:pass@host/db, to share "
                        "the study between machines (default: sqlite in STUDY_DIR)")
    p.add_argument("--study-name", default=None,
                   help="study name in the storage (default: the name of STUDY_DIR)")
    p.add_argument("--space", default=None, metavar="SPACE.json",
                   help='search space overrides, e.g. {"lr": {"low": 1e-4, "high": 1e-2, '
                        '"log": true}, "batch_size": {"choices": [4, 8]}, "optimizer": "sgd"}')
    p.add_argument("--stages", type=int, choices=[1, 2], default=1,
                   help="2: the study's protocol: a coarse stage (first half of the trials), "
                        "then one narrowed around the best (use with --sampler random)")
    p.add_argument("--stage1-trials", type=int_in(1, 100_000), default=None,
                   help="with --stages 2: trials of the broad stage 1 (default: half of "
                        "--trials); the rest search around stage 1's best")
    p.add_argument("--narrow-factor", type=float_in(0, 1, what="a share"), default=0.25,
                   help="with --stages 2: each stage-2 range is this share of stage 1's "
                        "width (log width for log ranges), centred on stage 1's best")
    p.add_argument("--protocol", choices=["study", "tpe-hyperband"], default=None,
                   help="the whole tuning protocol (options left at their defaults take its "
                        "values): study = random search of 50 broad + 50 narrowed trials x 20 "
                        "epochs; tpe-hyperband = 100 TPE trials pruned by Hyperband; both then "
                        "train the winner for --long-epochs and babysit it at a low learning "
                        "rate (STUDY_DIR/final, protocol.json)")
    p.add_argument("--long-epochs", type=int_in(0, 100_000), default=None,
                   help="epochs of the winner's long training after the search (--protocol "
                        "default 100; 0: none)")
    p.add_argument("--babysit-epochs", type=int_in(0, 100_000), default=None,
                   help="epochs at the winner's lr x --babysit-lr-factor after the long "
                        "training (--protocol default 30)")
    p.add_argument("--babysit-lr-factor", type=float_in(0, 1, what="a factor"), default=None,
                   help="learning rate of the babysitting phase as a share of the winner's "
                        "(--protocol default 0.05)")
    p.add_argument("--final-minutes", type=float_in(0, 1e6), default=None,
                   help="time budget of the final (long + babysitting) run")
    p.add_argument("--workers", type=int_in(1, 256), default=1,
                   help="trial processes on this machine, sharing its GPU with --device cuda "
                        "(one study in STUDY_DIR/study.db)")
    p.add_argument("--scale", type=float_in(0, 4, what="a scale factor"), default=None,
                   help="working resolution (model default: 0.5 for the U-Nets)")
    p.add_argument("--repeats", type=int_in(1, 10_000), default=2,
                   help="passes over the images per epoch")
    p.add_argument("--val-fraction", type=float_in(0, 0.9, what="a fraction"), default=0.2,
                   help="share of the training patients held out for validation")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="where the trials train (auto: CUDA, then MPS, then the CPU)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0,
                   help="seed of the samplers and of every trial (the validation split)")
    p.add_argument("--loader-workers", type=int_in(0, 64), default=2,
                   help="DataLoader processes per trial")
    p.add_argument("--pretrained", choices=["imagenet", "none"], default="imagenet",
                   help="initial encoder weights of the lite models")
    p.add_argument("--model-args", default="{}",
                   help='JSON of fixed architecture arguments, e.g. \'{"width": 16}\'')
    p.add_argument("--tune", dest="tune_postprocess", action="store_true",
                   help="score each trial after tuning its post-processing (slower)")
    p.add_argument("--keep-weights", action="store_true",
                   help="keep each trial's checkpoints (default: logs and config only)")
    p.add_argument("--timeout-minutes", type=float_in(0, 1e7), default=None,
                   help="time limit of the search: no trial starts after it, and running "
                        "trials stop after the epoch that passes it")
    p.add_argument("--max-failures", type=int_in(1, 100_000), default=None,
                   help="stop after this many crashed trials (default: --trials, at least 3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glandseg import GlandsegError
    from glandseg.search import require_optuna

    require_optuna()
    if getattr(args, "quiet", False):  # -q: no training progress bars in the trials
        os.environ["TQDM_DISABLE"] = "1"
    from glandseg.search.outputs import best_trial
    from glandseg.search.study import SearchConfig, open_study, run_search, search_space

    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as exc:
        raise GlandsegError(f"--model-args is not valid JSON: {exc}") from exc
    if not isinstance(model_args, dict):
        raise GlandsegError(f"--model-args must be a JSON object, got {args.model_args}")
    cfg = SearchConfig(
        model=args.model, data=args.data, out=args.out, sampler=args.sampler,
        pruner=args.pruner, trials=args.trials, minutes_per_trial=args.minutes_per_trial,
        storage=args.storage, study_name=args.study_name, space=args.space, stages=args.stages,
        workers=args.workers, epochs=args.epochs, scale=args.scale, repeats=args.repeats,
        val_fraction=args.val_fraction, device=args.device, seed=args.seed,
        loader_workers=args.loader_workers, pretrained=args.pretrained != "none",
        model_args=model_args, tune_postprocess=args.tune_postprocess,
        keep_weights=args.keep_weights, timeout_minutes=args.timeout_minutes,
        max_failures=args.max_failures, stage1_trials=args.stage1_trials,
        narrow_factor=args.narrow_factor,
    )
    final = {"long_epochs": args.long_epochs, "babysit_epochs": args.babysit_epochs,
             "babysit_lr_factor": args.babysit_lr_factor, "final_minutes": args.final_minutes}
    if args.protocol or args.long_epochs:
        from glandseg.search.protocol import ProtocolConfig, protocol_config, run_protocol

        if args.protocol:
            pc = protocol_config(args.protocol, cfg, **final)
        else:
            pc = ProtocolConfig(cfg, **{k: v for k, v in final.items() if v is not None})
        doc = run_protocol(pc)
        _print_protocol(doc, pc.search)
        return 0
    c = run_search(cfg)
    study = open_study(cfg, search_space(cfg))
    best = best_trial(study)
    print(f"study {cfg.name()}: {c.complete} complete, {c.pruned} pruned, {c.failed} failed "
          f"of {cfg.trials}")
    if best is not None:
        print(f"best: trial {best.number}, validation object Dice {best.value:.4f}; "
              f"train it with: glandseg train --params {cfg.study_dir / 'best.json'} "
              f"--data {args.data} --out RUN")
    return 0


def _print_protocol(doc: dict, cfg) -> None:
    s = doc["search"]
    print(f"study {cfg.name()}: {s['complete']} complete, {s['pruned']} pruned, "
          f"{s['failed']} failed of {cfg.trials}")
    for k in ("stage1", "stage2"):
        if k in s and s[k]["best_value"] is not None:
            print(f"{k}: best validation object Dice {s[k]['best_value']:.4f} "
                  f"(trial {s[k]['best_trial']}; {s[k]['trials']} trials in {k})")
    fin = doc.get("final")
    if fin:
        for name, ph in fin["phases"].items():
            v = ph["best_val_object_dice"]
            print(f"final {name} ({ph['epochs']} epochs, lr {ph['lr']:.3g}): best validation "
                  f"object Dice {'n/a' if v is None else f'{v:.4f}'}")
        print(f"final run: {fin['run']} (glandseg predict --model {fin['run']} ...)")
    print(f"record: {cfg.study_dir / 'protocol.json'}")
