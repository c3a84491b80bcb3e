"""`glandseg evaluate` (not yet wired)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="(not yet available)")
    p.set_defaults(func=lambda args: 2)
