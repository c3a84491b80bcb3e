"""`glandseg leaderboard`: rank metrics.json files against the published GlaS results."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from glandseg import GlandsegError

log = logging.getLogger(__name__)


def _default_name(path: Path) -> str:
    """``runs/unet/metrics.json`` → ``unet``; ``unet_test.json`` → ``unet_test``."""
    if path.stem.lower() in ("metrics", "scores", "score") and path.resolve().parent.name:
        return path.resolve().parent.name
    return path.stem


def run(args: argparse.Namespace) -> int:
    from glandseg.report import leaderboard as lb

    paths = [Path(p) for p in args.metrics]
    names = list(args.name or [])
    if len(names) > len(paths):
        raise GlandsegError(f"{len(names)} --name given for {len(paths)} metrics file(s)")
    names += [_default_name(p) for p in paths[len(names) :]]
    if len(set(names)) != len(names):
        raise GlandsegError(f"two results share a name ({', '.join(names)}); give each a --name")
    results = {name: lb.load_metrics(p) for name, p in zip(names, paths, strict=True)}
    rows = lb.rank_many(results, kinds=lb.ALL_KINDS if args.all else lb.DEFAULT_KINDS)
    print(lb.format_table(rows), end="")
    if args.csv:
        lb.write_csv(args.csv, rows)
        log.info("wrote %s", args.csv)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="rank metrics.json against the published GlaS results",
        description=(
            "Rank one or more metrics.json files (from 'glandseg score') against the published "
            "GlaS results as the 2015 challenge did: per metric and test part, competition "
            "ranks; the sum of the six ranks orders the methods. Uses the pooled metrics. "
            "A partial result (evaluate --limit, or fewer than 60 Test A / 20 Test B images) "
            "is listed below the ranked rows, marked ~, and not ranked."
        ),
    )
    p.add_argument("metrics", nargs="+", metavar="METRICS.json", help="metrics file(s) to rank")
    p.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="row name, once per metrics file in order (default: the file's stem, or its "
        "folder's name for metrics.json)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="include the later published methods (default: the 2015 challenge entries and "
        "the study's rows, as in its Fig. 5)",
    )
    p.add_argument("--csv", metavar="OUT", help="also write the ranked table as CSV")
    p.set_defaults(func=run)
