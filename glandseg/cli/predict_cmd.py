"""``glandseg predict``: segment H&E images into individual glands."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

DEFAULT_MODEL = "glas-unet"


def add_model_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL) -> None:
    """Options shared by predict, evaluate and demo."""
    p.add_argument("--model", default=default,
                   help=f"bundled model (glas-unet, glas-maskrcnn), run folder or .safetensors "
                        f"file (default: {default})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--tta", action="store_true", help="average over flips (slower, smoother)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in px at the model's scale (default: the model's)")


def make_predictor(args: argparse.Namespace):
    from glandseg.infer.predictor import Predictor, TileConfig

    pred = Predictor.from_name(args.model, device=args.device, tta=args.tta)
    if args.tile:
        pred.tiling = TileConfig(tile=args.tile, overlap=min(pred.tiling.overlap, args.tile // 4),
                                 batch_size=pred.tiling.batch_size)
    return pred


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="segment images into glands (labels, overlay, GeoJSON, glands.csv)",
        description="Per image: <stem>.png (16-bit instance labels, 0 = background), "
                    "<stem>_overlay.png, <stem>.geojson (QuPath); one glands.csv for all.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=0.62005,
                   help="micrometres per pixel for µm measurements (GlaS: 0.62005; 0 = none)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glandseg.infer.batch import collect_inputs, predict_files

    paths = collect_inputs(args.inputs)
    pred = make_predictor(args)
    rep = predict_files(paths, args.out, pred, mpp=args.mpp or None)
    print(f"segmented {rep.n_ok} image(s), {rep.n_glands} gland(s) → {args.out}")
    for path, why in rep.failed:
        print(f"failed: {path}: {why}")
    return 1 if rep.failed else 0
