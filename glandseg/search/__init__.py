"""Hyper-parameter search over the training engine with Optuna (``glandseg search``).

- :mod:`glandseg.search.space`: the searched parameters (a default space per model, a JSON
  file to override it, the narrower second stage of the study's two-stage random search);
- :mod:`glandseg.search.study`: the Optuna study (its storage, samplers, pruners, the
  worker loop that keeps exactly ``--trials`` finished trials); each trial is a real
  :class:`~glandseg.train.loop.Trainer` run scored by the official validation object Dice;
- :mod:`glandseg.search.outputs`: ``best.json``, ``trials.csv`` and the plots.

Optuna is an optional dependency (``pip install 'glandseg[search]'``): nothing here is
imported by ``import glandseg``.
"""

from __future__ import annotations

from glandseg import GlandsegError


def require_optuna():
    """The ``optuna`` module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError as exc:
        raise GlandsegError("glandseg search needs Optuna, which is not installed: "
                            "pip install 'glandseg[search]'") from exc
    return optuna
