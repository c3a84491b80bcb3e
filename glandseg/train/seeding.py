"""Per-epoch, per-crop random streams: what makes ``--resume`` bit-identical with loader workers.

The training loader does not draw its shuffling and augmentation from streams that run on
from epoch to epoch (the loader's generator, the global torch RNG of each worker process):
those live in processes that a kill takes away, and persistent workers keep theirs from one
epoch to the next. Instead, epoch ``e`` of a run seeded ``s`` draws everything from
``(s, e)`` alone:

- :class:`EpochSampler` shuffles the dataset with a generator seeded from ``(s, e)`` and
  hands out ``(index, crop_seed)`` pairs, the crop seed drawn from the same generator;
- :class:`SeededItems` seeds the torch, NumPy and Python RNGs with ``crop_seed`` before it
  builds the crop (augmentation), in whatever process and worker it runs.

So epoch ``e`` produces the same batches whatever happened before it (a resume after a
kill), whatever the number of loader workers, their prefetching or persistence. In the main
process (``workers=0``) the global RNG states are put back after each crop, so the model's
own random draws do not depend on the augmentation's.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

#: Crop seeds are drawn below this bound (any value torch, NumPy and ``random`` accept).
_SEED_BOUND = 2**62


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed for epoch ``epoch`` (0-based) of a run seeded ``seed`` (both >= 0)."""
    state = np.random.SeedSequence([int(seed), int(epoch), 0x61C8]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


class EpochSampler(Sampler):
    """Shuffles ``n`` items anew each epoch from ``(seed, epoch)``; yields ``(index,
    crop_seed)`` pairs (``int``, ``int``) for :class:`SeededItems`.

    Call :meth:`set_epoch` before iterating (epoch 0 otherwise). ``rank``/``world_size``:
    this process's share (every ``world_size``-th item from ``rank``, after dropping the
    tail that does not divide evenly), as :class:`torch.utils.data.DistributedSampler`;
    the crop seeds depend on the position in the whole epoch, not on the share."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError(f"nothing to sample from (n={n})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.seed, self.rank, self.world_size = n, int(seed), rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def pairs(self) -> list[tuple[int, int]]:
        """This process's ``(index, crop_seed)`` pairs of the current epoch, in order."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, _SEED_BOUND, (self.n,), generator=g, dtype=torch.int64).tolist()
        usable = self.n - self.n % self.world_size
        return [(order[k], seeds[k]) for k in range(self.rank, usable, self.world_size)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs())

    def __len__(self) -> int:
        return self.n // self.world_size


class SeededItems(Dataset):
    """``dataset`` indexed by ``(index, crop_seed)`` (what :class:`EpochSampler` yields):
    item ``index`` built with the torch, NumPy and Python RNGs seeded by ``crop_seed``.
    In a loader worker the seeds stay set (the worker's streams are not used otherwise);
    in the main process the previous RNG states are restored afterwards."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        if get_worker_info() is not None:
            _seed_all(seed)
            return self.dataset[index]
        py, npy = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                _seed_all(seed)
                return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def worker_init(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed NumPy and ``random`` from the worker's torch
    seed, and one thread per worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
