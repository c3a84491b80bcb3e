"""The ``glandseg`` command: one verb per sub-module, each a thin wrapper over the API.

Every verb module defines ``register(subparsers)`` which adds its parser and sets
``func`` (``args → exit status``). Errors caused by input (:class:`GlandsegError`)
print one line and exit with 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from glandseg import GlandsegError, __version__

VERBS = ("data", "train", "predict", "evaluate", "score", "leaderboard", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glandseg",
        description="Gland instance segmentation in H&E histology (GlaS), with the official metrics.",
    )
    parser.add_argument("--version", action="version", version=f"glandseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        importlib.import_module(f"glandseg.cli.{verb}_cmd").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except GlandsegError as exc:
        print(f"glandseg {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glandseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
