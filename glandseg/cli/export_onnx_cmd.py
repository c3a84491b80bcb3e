"""``glandseg export-onnx``: write the ONNX graph of a trained U-Net (for ONNX Runtime, the
CPU backend of predict/evaluate/grade), beside its weights or to ``--out``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx", help="write the ONNX graph of a trained U-Net (CPU backend)",
        description="Exports a trained U-Net (a run folder of `glandseg train`, a .safetensors "
                    "file with its JSON, or a bundled name) to ONNX: RUN/best.onnx beside "
                    "best.safetensors (FILE.onnx beside FILE.safetensors). predict, evaluate "
                    "and grade use it on the CPU (--backend onnx, the default there) and make "
                    "it themselves on first use where torch is installed; this verb makes it "
                    "ahead of time, e.g. before copying a run to a machine without torch. "
                    "Needs torch and onnx: pip install 'glandseg[train]'. Mask R-CNN models "
                    "are not exported (they run on torch). With --bioimageio OUT.zip it "
                    "writes a bioimage.io model package instead (QuPath, deepImageJ, "
                    "ilastik): the per-pixel class probabilities only, not glandseg's "
                    "instance post-processing; needs also pip install bioimageio.spec.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, .safetensors file or bundled name")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the graph (default: beside the weights)")
    p.add_argument("--bioimageio", default=None, metavar="OUT.zip",
                   help="write a bioimage.io model package (ONNX graph ending in softmax, "
                        "rdf.yaml, test tensors, cover, README) to OUT.zip, checked with "
                        "bioimageio.spec")
    p.add_argument("--sample", default=None, metavar="IMAGE",
                   help="with --bioimageio: a GlaS training image (e.g. GLAS/train_1.bmp) "
                        "whose crop becomes the package's test input and cover")
    p.add_argument("--crop", type=int, default=256, metavar="N",
                   help="with --bioimageio: side of the test crop in pixels, a multiple of "
                        "32 (default 256)")
    p.add_argument("--int8", action="store_true",
                   help="also write the int8 graph (X.int8.onnx beside X.onnx) for "
                        "--precision int8, calibrated on --calibration images")
    p.add_argument("--calibration", nargs="+", default=None, metavar="IMAGE",
                   help="with --int8: H&E images like the ones to segment (files, folders or "
                        "globs; 10-20 are enough; not the images you will score the model on)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glandseg import GlandsegError
    from glandseg.infer.backend import OnnxBackend, export_graph
    from glandseg.models.store import resolve_config

    if args.bioimageio is not None:
        return _run_bioimageio(args)
    if args.sample is not None:
        raise GlandsegError("--sample is for --bioimageio OUT.zip; drop it or add --bioimageio")
    _, weights = resolve_config(args.model)
    if weights is None:
        raise GlandsegError(f"{args.model}: an architecture without trained weights; export a "
                            "run folder or a .safetensors file")
    weights = Path(weights)
    dest = Path(args.out) if args.out else weights.with_suffix(".onnx")
    if dest.suffix != ".onnx":
        raise GlandsegError(f"--out {dest}: give a file name ending in .onnx")
    if not dest.parent.is_dir():
        raise GlandsegError(f"--out {dest}: folder {dest.parent} does not exist")
    if args.int8 and not args.calibration:
        raise GlandsegError("--int8 needs --calibration IMAGE...: 10-20 H&E images like the "
                            "ones to segment (their activation ranges set the int8 scales)")
    if args.calibration and not args.int8:
        raise GlandsegError("--calibration is for --int8; add --int8 or drop it")
    calibration = None
    if args.int8:
        from glandseg.report.batch import collect_inputs

        calibration = collect_inputs(args.calibration)  # one-line errors for bad paths
    path = export_graph(args.model, weights, dest)
    be = OnnxBackend(path)
    print(f"wrote {path} (ONNX opset 17; outputs: {', '.join(be.outputs)}; "
          f"weights {be.meta.get('weights_sha256', '')[:12]})")
    if calibration is not None:
        from glandseg.infer.predictor import export_int8
        from glandseg.models.quantize import int8_path

        q = export_int8(args.model, calibration, int8_path(path),
                        source=f"{len(calibration)} image(s): "
                               + ", ".join(c.name for c in calibration[:20]))
        print(f"wrote {q} (int8, calibrated on {len(calibration)} image(s); use it with "
              "--precision int8)")
    return 0


def _run_bioimageio(args: argparse.Namespace) -> int:
    from glandseg import GlandsegError
    from glandseg.models.bioimageio import export_bioimageio

    if args.out is not None:
        raise GlandsegError("--out is the ONNX graph's path; with --bioimageio the package "
                            "goes to the OUT.zip given there: drop --out")
    if args.sample is None:
        raise GlandsegError("--bioimageio needs --sample IMAGE: a GlaS training image (e.g. "
                            "GLAS/train_1.bmp) for the package's test crop and cover")
    path = export_bioimageio(args.model, args.bioimageio, args.sample, crop=args.crop)
    print(f"wrote {path} (bioimage.io model package, format 0.5, ONNX opset 17; checked "
          "with bioimageio.spec; class probabilities only, no instance post-processing)")
    return 0
