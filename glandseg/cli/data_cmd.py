"""``glandseg data``: look at a data folder.

``glandseg data check DIR [--json FILE] [--quick]`` prints image and annotation counts per
split, sizes, glands per image, grades and patients, then every problem file by name;
it exits with 1 if there is an error (warnings alone exit 0).
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb and its ``check`` action to the ``glandseg`` parser."""
    p = sub.add_parser("data", help="check a GlaS-like data folder",
                       description="Inspect a data folder.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    c = actions.add_parser(
        "check",
        help="counts, sizes, glands, grades and every problem file",
        description=(
            "Check a GlaS-like folder (official flat BMP folder, train/ and test/ sub-folders, "
            "PNG/TIFF copies, or a folder of your own images): image and annotation counts "
            "per split, size range, glands per image, grades and patients, and every problem "
            "file by name. Exits with 1 if any error is found."
        ),
    )
    c.add_argument("dir", metavar="DIR", help="the data folder")
    c.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    c.add_argument("--quick", action="store_true",
                   help="read image headers only (does not find truncated images)")
    c.add_argument("--workers", type=int, default=None, metavar="N",
                   help="threads reading files (default: up to 4)")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Run ``data check``; 0 when the folder has no error, 1 otherwise."""
    from glandseg.data.check import check_folder
    from glandseg.data.io import write_text

    report = check_folder(args.dir, decode_images=not args.quick, workers=args.workers)
    print(report)
    if args.json:
        write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
        log.info("report written to %s", args.json)
    return 0 if report.ok else 1
