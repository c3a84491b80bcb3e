"""Train a model: one process (:class:`glandseg.train.loop.Trainer`) or, under ``torchrun``
with several processes, one of them (:class:`glandseg.train.distributed.DistributedTrainer`).

The entry point of ``glandseg train`` and of scripts; it sits above ``loop`` and
``distributed`` so that neither imports the other's caller.
"""

from __future__ import annotations

from pathlib import Path

from glandseg.train import distributed
from glandseg.train.loop import TrainConfig, Trainer

__all__ = ["train"]


def train(tc: TrainConfig) -> Path:
    """Train a model (see :class:`~glandseg.train.loop.TrainConfig`); returns the run folder.
    Under ``torchrun`` with several processes, one of them (:mod:`glandseg.train.distributed`)."""
    if distributed.from_env().enabled:
        return distributed.DistributedTrainer(tc).fit()
    return Trainer(tc).fit()
