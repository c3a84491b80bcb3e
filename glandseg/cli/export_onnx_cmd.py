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
                    "are not exported (they run on torch).",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, .safetensors file or bundled name")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the graph (default: beside the weights)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glandseg import GlandsegError
    from glandseg.infer.backend import OnnxBackend, export_graph
    from glandseg.models.store import resolve_config

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
    path = export_graph(args.model, weights, dest)
    be = OnnxBackend(path)
    print(f"wrote {path} (ONNX opset 17; outputs: {', '.join(be.outputs)}; "
          f"weights {be.meta.get('weights_sha256', '')[:12]})")
    return 0
