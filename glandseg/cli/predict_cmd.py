"""``glandseg predict``: segment H&E images into individual glands."""

from __future__ import annotations

import argparse
import logging

from glandseg.cli import add_backend_args, add_jobs_arg, float_in, int_in

log = logging.getLogger(__name__)

DEFAULT_MODEL = "glas-unet"
#: Accepted ``--tile`` sides (px at the model's scale): below 64 px a tile holds less than
#: a gland and the number of tiles explodes (``--tile 1`` would run for hours); above
#: 4096 px one tile's activations need tens of GB.
TILE_RANGE = (64, 4096)


#: Accepted ``--input-mpp`` values (µm per pixel).
MPP_RANGE = (0, 100)
STAIN_METHODS = ("macenko", "reinhard")
#: ``--deblur`` default: sharpen only images measurably blurrier than the training images.
DEFAULT_DEBLUR = "auto"


def add_model_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL) -> None:
    """Options shared by predict, evaluate and demo."""
    p.add_argument("--model", default=default,
                   help=f"bundled model (glas-unet, glas-maskrcnn), run folder or .safetensors "
                        f"file (default: {default})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto (default): CUDA, else MPS, else CPU")
    add_backend_args(p)
    p.add_argument("--tta", action="store_true", help="average over flips (slower, smoother)")
    p.add_argument("--tile", type=int_in(*TILE_RANGE), default=None,
                   help=f"tile side in px at the model's scale, {TILE_RANGE[0]}-{TILE_RANGE[1]} "
                        "(default: the model's)")
    p.add_argument("--input-mpp", type=float_in(*MPP_RANGE, what="micrometres per pixel"),
                   default=None, metavar="UM_PER_PX",
                   help="resolution of the input images in micrometres per pixel, e.g. 0.25 "
                        "for a 40x scan, 0.5 for 20x (default: read from the file's TIFF/OME/"
                        "PNG/JPEG metadata when it is physical, else the model's: 0.62005 for "
                        "the GlaS models, said once). Images are rescaled to the model's "
                        "resolution, labels come back at the input's; glands.csv µm columns "
                        "use it")
    p.add_argument("--stain-norm", choices=STAIN_METHODS, default=None,
                   help="normalise the H&E stain to the model's reference (GlaS training "
                        "images) before predicting: macenko (stain vectors) or reinhard "
                        "(L*a*b* statistics); default: off")
    p.add_argument("--deblur", choices=("auto", "off"), default=DEFAULT_DEBLUR,
                   help="auto (default): measure each image's focus at the model's resolution "
                        "and sharpen (unsharp mask) one blurrier than the GlaS training "
                        "images (0.96 px) by more than 0.7 px (Gaussian sigma); sharp images "
                        "pass unchanged. U-Nets only. off: never")


def make_predictor(args: argparse.Namespace):
    from glandseg.infer.predictor import Predictor, TileConfig

    # a --device this machine lacks is a one-line error from the predictor's pick_device
    pred = Predictor.from_name(args.model, device=args.device, tta=args.tta,
                               backend=getattr(args, "backend", "auto"),
                               threads=getattr(args, "threads", None),
                               precision=getattr(args, "precision", "fp32"),
                               input_mpp=getattr(args, "input_mpp", None),
                               stain_norm=getattr(args, "stain_norm", None),
                               deblur=getattr(args, "deblur", None))
    if args.tile:
        pred.tiling = TileConfig(tile=args.tile, overlap=min(pred.tiling.overlap, args.tile // 4),
                                 batch_size=pred.tiling.batch_size)
    return pred


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="segment images into glands (labels, overlay, GeoJSON, glands.csv)",
        description="Per image: <stem>.png (16-bit instance labels, 0 = background), "
                    "<stem>_overlay.png, <stem>.geojson (QuPath); one glands.csv with the "
                    "rows of every image whose outputs are in --out (runs into one folder "
                    "merge, also concurrent ones). Never overwrites an input or a file "
                    "glandseg did not write (records in --out/.glandseg/); outputs of an "
                    "earlier run are refused unless --overwrite or --skip-existing. A whole "
                    "slide (.svs, .ndpi, .mrxs, ... with OpenSlide; pyramidal TIFF) or an "
                    "image over 4096² px is read by region at the model's resolution, tissue "
                    "only, resuming an interrupted run from its finished windows: "
                    "<stem>.tif (tiled pyramidal label TIFF) instead of the PNG and a "
                    "downsampled overlay.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or slide files, folders or globs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float_in(*MPP_RANGE, what="micrometres per pixel"),
                   default=None, dest="deprecated_mpp", metavar="UM_PER_PX",
                   help="deprecated alias of --input-mpp (it now also rescales the image)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true",
                       help="replace outputs an earlier glandseg run wrote into --out")
    again.add_argument("--skip-existing", action="store_true",
                       help="keep images whose outputs are all in --out already (resume a "
                            "large batch) and segment only the others")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--dask-scheduler", metavar="ADDRESS", default=None,
                       help="run the windows of whole slides as tasks on this Dask scheduler "
                            "(e.g. tcp://host:8786); the workers must see the inputs and "
                            "--out (needs: pip install 'glandseg[dask]')")
    scale.add_argument("--workers", type=int_in(1, 256), default=None, metavar="N",
                       help="run the windows of whole slides on a local Dask cluster of N "
                            "worker processes (results identical to a serial run)")
    add_model_args(p)
    add_jobs_arg(p)
    p.add_argument("--allow-untrained", action="store_true",
                   help="accept an architecture name as --model (unet, unet-lite0, ...: "
                        "random or ImageNet weights, meaningless glands; for testing only)")
    from glandseg.cli.grade_cmd import add_grader_args

    add_grader_args(p)
    p.set_defaults(func=run)


def _resolve_mpp_alias(args: argparse.Namespace) -> None:
    """``--mpp`` (deprecated) → ``--input-mpp``, with a warning; both and different: error."""
    from glandseg import GlandsegError

    old = getattr(args, "deprecated_mpp", None)
    if old is None:
        return
    if args.input_mpp is not None and args.input_mpp != old:
        raise GlandsegError(f"--mpp {old:g} and --input-mpp {args.input_mpp:g} disagree; "
                            "--mpp is a deprecated alias of --input-mpp: give only --input-mpp")
    log.warning("--mpp is deprecated: use --input-mpp (the input's micrometres per pixel, "
                "which now also rescales the image to the model's resolution)")
    args.input_mpp = old


def refuse_untrained(spec: str, allow: bool = False) -> None:
    """Refuse (:class:`GlandsegError`) a ``--model`` that names a bare architecture (no
    trained weights: its "glands" are meaningless) unless ``allow``, suggesting the closest
    bundled model. Run folders and files pass; other names are checked by the loader."""
    import difflib
    from pathlib import Path

    from glandseg import GlandsegError
    from glandseg.models import registry

    if allow or Path(spec).exists() or spec not in registry.architectures():
        return
    near = difflib.get_close_matches(spec, registry.BUNDLED, n=1, cutoff=0)
    hint = f"did you mean {near[0]}? " if near else ""
    raise GlandsegError(f"--model {spec} is an architecture without trained weights (its "
                        f"glands would be meaningless); {hint}Give a bundled model "
                        f"({', '.join(registry.BUNDLED)}), a run folder from `glandseg "
                        "train` or a .safetensors file, or pass --allow-untrained to "
                        "predict with it anyway")


def run(args: argparse.Namespace) -> int:
    from glandseg.engine.predict import predict_files
    from glandseg.engine.slide import dask_client
    from glandseg.report.batch import collect_inputs, failure_line, plan_outputs

    _resolve_mpp_alias(args)
    refuse_untrained(args.model, getattr(args, "allow_untrained", False))
    mode = "overwrite" if args.overwrite else "skip" if args.skip_existing else "refuse"
    paths = collect_inputs(args.inputs)
    plan_outputs(paths, args.out, mode)  # refuse before loading the model
    pred = make_predictor(args)
    grader = None
    if not getattr(args, "no_grade", False):
        from glandseg.engine.grade import open_grader

        grader = open_grader(pred, getattr(args, "grader", None))
    with dask_client(getattr(args, "dask_scheduler", None),
                     getattr(args, "workers", None)) as client:
        rep = predict_files(paths, args.out, pred, mpp=args.input_mpp, mode=mode,
                            progress=not getattr(args, "quiet", False), client=client,
                            grader=grader, jobs=getattr(args, "jobs", None))
    skipped = f", {rep.n_skipped} skipped (outputs present)" if rep.n_skipped else ""
    print(f"segmented {rep.n_ok} image(s), {rep.n_glands} gland(s){skipped} → {args.out} "
          f"(glands.csv: {rep.n_rows} row(s))")
    for path, why in rep.failed:
        print(failure_line(path, why))
    return 1 if rep.failed else 0
