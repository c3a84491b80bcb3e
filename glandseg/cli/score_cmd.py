"""``glandseg score PRED_DIR GT_DIR [--json FILE] [--csv FILE]``: official GlaS metrics.

For every ``<stem>_anno.<ext>`` in GT_DIR of the parts scored (by default the parts of
which PRED_DIR holds predictions, e.g. Test A and B of a whole GlaS folder, or
``--parts``) reads the predicted label image ``<stem>.png|.tif|.tiff`` from PRED_DIR
(each one must be there), prints a table per test part (pooled official scores and the
mean of per-image scores) and optionally writes the summary JSON and a per-image CSV,
atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path

from glandseg import GlandsegError
from glandseg.data.io import write_text

#: ``glandseg.metrics.score.GT_MIN_PIECE``, repeated so that the CLI starts without scipy
#: (a test keeps the two equal).
GT_MIN_PIECE = 10
#: ``glandseg.metrics.score.GT_PARTS``, repeated likewise.
GT_PARTS = ("train", "testA", "testB", "other")

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score predicted label images against annotations (official GlaS metrics)",
        description=(
            "Score predicted instance label images (0 = background, one id per gland) "
            "against GlaS annotations: object F1, object Dice and object Hausdorff, pooled "
            "over each test part (official) and averaged per image."
        ),
    )
    p.add_argument("pred_dir", metavar="PRED_DIR", help="folder of <stem>.png|.tif predictions")
    p.add_argument("gt_dir", metavar="GT_DIR",
                   help="folder of <stem>_anno.* annotations (a whole GlaS folder is fine)")
    p.add_argument("--parts", type=_parts, default=None, metavar="PART[,PART]",
                   help="score these parts only, each of them completely: "
                        f"{', '.join(GT_PARTS)} (other: stems that are not GlaS names), "
                        "e.g. testA,testB (default: every part that PRED_DIR holds "
                        "predictions of; the others are named and left out)")
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    p.add_argument("--csv", metavar="FILE", help="write one row per image as CSV")
    p.add_argument("--split-gt", action="store_true",
                   help="ground truth only: give each connected region (8-connected) of a "
                        "ground-truth label its own id, and delete ground-truth regions "
                        f"smaller than {GT_MIN_PIECE} px (stray pixels) from the truth "
                        "(four GlaS Test B annotations reuse one id for several glands; the "
                        "published results are only reachable this way). Predictions are "
                        "always scored as given.")
    p.set_defaults(func=run)


def _parts(text: str) -> list[str]:
    """argparse ``type`` of ``--parts``: comma-separated names of :data:`GT_PARTS`."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in parts if t not in GT_PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(bad) or '(none)'}: "
                                         f"choose from {', '.join(GT_PARTS)}")
    return parts


def run(args: argparse.Namespace) -> int:
    from glandseg.metrics.score import evaluate_dirs, format_table, per_image_table, summarize

    for flag, path in (("--json", args.json), ("--csv", args.csv)):
        if path and Path(path).is_dir():
            raise GlandsegError(f"{flag} {path} is a folder; give a file name, e.g. "
                                f"{Path(path) / ('metrics.json' if flag == '--json' else 'per_image.csv')}")
    results = evaluate_dirs(args.pred_dir, args.gt_dir, split_gt=args.split_gt,
                            parts=getattr(args, "parts", None))
    summary = summarize(results)
    print(format_table(summary))
    if args.json:
        write_text(args.json, json.dumps(summary, indent=2) + "\n")
        log.info("wrote %s", args.json)
    if args.csv:
        rows = per_image_table(results)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(args.csv, buf.getvalue())
        log.info("wrote %s", args.csv)
    return 0
