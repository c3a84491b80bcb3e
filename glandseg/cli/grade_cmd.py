"""``glandseg grade``: benign/malignant grade of H&E images (GlaS-like colon tissue)."""

from __future__ import annotations

import argparse

from glandseg.cli import add_backend_args


def add_grader_args(p: argparse.ArgumentParser, switch: bool = True) -> None:
    """``--grader`` (and, with ``switch``, ``--no-grade``) for predict, evaluate and grade."""
    p.add_argument("--grader", default=None, metavar="JSON",
                   help="grader file from `python -m glandseg.grade.fit` (default: the bundled "
                        "glas-grade, fit on the GlaS training images with glas-unet)")
    if switch:
        p.add_argument("--no-grade", action="store_true",
                       help="do not grade the images (benign/malignant)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grade", help="benign/malignant grade of images (grades.csv)",
        description="Runs each image through the grader's segmentation network (the "
                    "bundled grader: glas-unet's encoder features, pooled; a grader fit on "
                    "gland morphometrics also segments the glands) and writes "
                    "--out/grades.csv: "
                    "image, grade (benign or malignant), grade_probability (P(malignant)); "
                    "image names a spreadsheet would read as formulas get a leading '. Trained "
                    "on GlaS (colon, 20x, 0.62 µm/px); other tissue or magnifications are "
                    "outside what it has seen. Never overwrites an input or a file glandseg "
                    "did not write; an earlier grades.csv of glandseg needs --overwrite.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a grades.csv that glandseg wrote earlier into --out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto (default): CUDA, else MPS, else CPU")
    add_backend_args(p)
    add_grader_args(p, switch=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glandseg.engine.grade import grade_files
    from glandseg.report.batch import failure_line

    rep = grade_files(args.inputs, args.out, overwrite=args.overwrite, grader=args.grader,
                      device=args.device, backend=args.backend, threads=args.threads,
                      precision=getattr(args, "precision", "fp32"),
                      progress=not getattr(args, "quiet", False))
    n = len(rep.rows)
    print(f"graded {n} image(s): {n - rep.n_malignant} benign, {rep.n_malignant} malignant → "
          f"{rep.target}")
    for path, why in rep.failed:
        print(failure_line(path, why))
    return 1 if rep.failed else 0
