"""Grade Test A and Test B with a grader (default: the bundled one) and score it against
GlaS's Grade.csv: ``test_grades.csv`` and ``test_grading.json`` (the same files as
``glandseg evaluate``'s ``grades.csv`` / ``grading.json``, without re-scoring segmentation).
Run once per grader; every run is listed in the README's test-evaluation ledger.

    .venv/bin/python results/grading/evaluate_grader.py [--data ../shared/glas] [--grader FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from glandseg.data.discover import discover
from glandseg.data.io import read_image
from glandseg.engine.grade import GradeLog
from glandseg.report.grading import format_grading

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parents[2] / "shared" / "glas"))
    ap.add_argument("--grader", default=None, help="grader JSON (default: the bundled one)")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    log = GradeLog.open(None, args.grader)
    if log is None:
        raise SystemExit("the grader cannot be used (see the warning above)")
    for s in tqdm(discover(args.data, splits=("testA", "testB")), unit="img"):
        log.add(s.name, s.split, s.grade, read_image(s.image))
    out = Path(args.out)
    log.write(out)
    for name in ("grades.csv", "grading.json"):
        (out / name).replace(out / f"test_{name}")
    print(format_grading(log.summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
