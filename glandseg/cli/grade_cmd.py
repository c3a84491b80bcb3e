"""``glandseg grade``: benign/malignant grade of H&E images (GlaS-like colon tissue)."""

from __future__ import annotations

import argparse
import logging

from glandseg.cli import add_backend_args

log = logging.getLogger(__name__)

GRADES_NAME = "grades.csv"


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
    import os
    from pathlib import Path

    from tqdm import tqdm

    from glandseg import GlandsegError
    from glandseg.data.io import read_image
    from glandseg.data.slide import is_large
    from glandseg.grade.engine import ImageGrader
    from glandseg.report.batch import (
        STATE_DIR,
        _csv_problem,
        _prepare_out,
        check_writable,
        collect_inputs,
        failure_line,
        folder_lock,
        write_joined,
    )
    from glandseg.report.grading import grades_csv

    paths = collect_inputs(args.inputs)
    out = _prepare_out(args.out)
    check_writable(out)  # before loading the grader
    target = out / GRADES_NAME
    inputs = {Path(os.path.abspath(p)) for p in paths} | {p.resolve() for p in paths}
    if target in inputs or (target.exists() and target.resolve() in inputs):
        raise GlandsegError(f"{target} is one of the inputs; choose an --out folder that "
                            "holds no input images")
    problem = _csv_problem(out, GRADES_NAME) if out.is_dir() else None
    if problem:
        raise GlandsegError(f"refusing to overwrite {problem}: move it away or choose "
                            "another --out")
    if target.exists() and not args.overwrite:
        raise GlandsegError(f"{target} exists (written by glandseg earlier): pass --overwrite "
                            "to replace it or choose another --out")
    grader = ImageGrader.load(args.grader, device=args.device, backend=args.backend,
                              threads=args.threads)
    rows, failed = [], []
    for path in tqdm(paths, desc="grade", unit="img",
                     disable=True if getattr(args, "quiet", False) else None):
        try:
            if is_large(path):
                raise GlandsegError(f"{path}: a whole slide or large image; the grader "
                                    "grades GlaS-sized fields of view (crop regions first)")
            g = grader.grade(read_image(path))
        except GlandsegError as exc:
            log.error("%s", exc)
            failed.append((str(path), str(exc)))
            continue
        rows.append((path.stem, g.grade, g.probability))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GlandsegError(f"{out}: cannot create the output folder ({exc})") from exc
    try:
        (out / STATE_DIR).mkdir(exist_ok=True)
        with folder_lock(out):
            write_joined(out, GRADES_NAME, grades_csv(rows))
    except OSError as exc:  # a full disk: the earlier grades.csv (if any) stays whole
        raise GlandsegError(f"{out}: cannot write {GRADES_NAME} ({exc.strerror or exc}); "
                            "free space (or fix the folder) and run again") from exc
    n_mal = sum(r[1] == "malignant" for r in rows)
    print(f"graded {len(rows)} image(s): {len(rows) - n_mal} benign, {n_mal} malignant → "
          f"{target}")
    for path, why in failed:
        print(failure_line(path, why))
    return 1 if failed else 0
