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
    rows = lb.rank_many(results, kinds=lb.RANKED_KINDS if args.ranked_only else lb.ALL_KINDS)
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
            "Rank one or more metrics.json files (from 'glandseg score') against the 2015 "
            "GlaS challenge entries as the challenge did: per metric and test part, "
            "competition ranks; the sum of the six ranks orders the methods. Uses the pooled "
            "metrics. Only official results are ranked (the challenge entries and yours); "
            "listed below them, unranked and marked: the study's rows scored with a "
            "non-official metric (*), methods published after the challenge (^) and partial "
            "results (evaluate --limit, or fewer than 60 Test A / 20 Test B images: ~)."
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
        "--ranked-only",
        action="store_true",
        help="leave out the study's rows and the later methods (default: listed, unranked, "
        "below the ranked rows); a partial result of yours is still listed, unranked",
    )
    p.add_argument("--csv", metavar="OUT", help="also write the table as CSV (place and "
                   "ranks empty on unranked rows, whose note says why)")
    p.set_defaults(func=run)
