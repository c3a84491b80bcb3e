"""Several processes (GPUs, machines) training one model: DistributedDataParallel under
``torchrun``.

``torchrun --nproc_per_node N -m glandseg train ...`` starts N copies of the command; each
finds its place in the environment torchrun sets (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``), and :func:`glandseg.train.run.train`
then runs :class:`DistributedTrainer` instead of the one-process
:class:`~glandseg.train.loop.Trainer` (one process, without torchrun or with
``WORLD_SIZE=1``, stays the default and is unchanged).

What differs from one process, hook by hook (the epoch loop itself is the Trainer's):

- backend NCCL on CUDA (one GPU per process: ``cuda:LOCAL_RANK``), gloo on the CPU;
- ``--batch-size`` is the *global* batch: each of the N processes takes ``batch / N``
  crops per step from a :class:`~glandseg.train.seeding.EpochSampler` (every N-th crop of
  the one-process epoch, each with that epoch's own crop seed), and DDP averages the
  gradients, so a step of N processes equals a step of one process on the whole batch;
- rank 0 alone creates the run folder, writes ``config.json``, the checkpoint commits,
  ``metrics.csv``, ``curves.png`` and ``train.log``, validates (once, not N times: the
  result is broadcast), and tunes the post-processing at the end;
- the time budget (``--max-minutes``) is rank 0's clock, shared at every epoch start and
  end, so every process stops after the same epoch and follows the same learning rate;
- ``--resume``: rank 0 verifies and republishes the commit, then every process loads the
  same weights and optimizer state (so on several machines the run folder, like the data,
  must be on a file system that all of them see);
- each rank draws its own augmentation (random state seeded by seed, epoch and rank).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from glandseg import GlandsegError
from glandseg.train import runstate
from glandseg.train.loop import TrainConfig, Trainer, seed_everything
from glandseg.train.seeding import EpochSampler, SeededItems, worker_init

log = logging.getLogger(__name__)

#: How long a process waits at a collective (e.g. for rank 0's validation) before failing.
COLLECTIVE_TIMEOUT_MIN = 120


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` (0..world_size-1, rank 0 is the main process),
    ``local_rank`` (index on its machine: the GPU it uses), ``world_size``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env(env: dict | None = None) -> DistEnv:
    """The :class:`DistEnv` that torchrun's variables describe (one process when unset)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return DistEnv()
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise GlandsegError(f"torchrun environment: WORLD_SIZE/RANK/LOCAL_RANK must be "
                            f"integers ({exc}); launch with torchrun") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise GlandsegError(f"torchrun environment: RANK {rank} does not fit WORLD_SIZE "
                            f"{world}; launch with torchrun")
    return DistEnv(rank, local, world)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Crops per process and step for a global ``batch_size``; it must divide evenly."""
    if batch_size % world_size:
        lo = max(world_size, batch_size // world_size * world_size)
        raise GlandsegError(f"--batch-size {batch_size} is not a multiple of the {world_size} "
                            f"processes (the global batch is split evenly); use e.g. "
                            f"--batch-size {lo}")
    return batch_size // world_size


def _broadcast(obj, env: DistEnv):
    """``obj`` of rank 0, on every rank."""
    box = [obj if env.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _main_first(env: DistEnv, fn):
    """Run ``fn`` on rank 0 and give every rank its result; an error on rank 0 becomes the
    same one-line error on every rank (no rank waits forever)."""
    result, error = None, None
    if env.main:
        try:
            result = fn()
        except GlandsegError as exc:
            error = str(exc)
            _broadcast(("error", error), env)
            raise
        except BaseException:
            _broadcast(("error", "rank 0 failed (see its message)"), env)
            raise
        _broadcast(("ok", result), env)
        return result
    kind, result = _broadcast(None, env)
    if kind == "error":
        raise GlandsegError(result)
    return result


class DistributedTrainer(Trainer):
    """:class:`~glandseg.train.loop.Trainer` as one of ``world_size`` DDP processes
    (see the module docstring)."""

    def __init__(self, tc: TrainConfig, callbacks=(), env: DistEnv | None = None) -> None:
        super().__init__(tc, callbacks)
        self.env = env or from_env()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.env.local_rank)
            self.device = torch.device("cuda", self.env.local_rank)
        elif self.device.type != "cpu":
            raise GlandsegError(f"distributed training runs on CUDA or the CPU, not "
                                f"{self.device.type}; use --device cuda or --device cpu")
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        self._elapsed_synced = 0.0
        if not self.env.main:  # one progress bar and one log, rank 0's
            os.environ["TQDM_DISABLE"] = "1"

    # -- process group ----------------------------------------------------------------------
    def fit(self):
        own = not dist.is_initialized()
        if own:
            # rank 0 validates and tunes alone: the others may wait that long at a collective
            dist.init_process_group(self.backend, rank=self.env.rank,
                                    world_size=self.env.world_size,
                                    timeout=datetime.timedelta(minutes=COLLECTIVE_TIMEOUT_MIN))
        try:
            return super().fit()
        finally:
            if own and dist.is_initialized():
                dist.destroy_process_group()

    def _owns_run_folder(self) -> bool:
        return self.env.main  # rank 0 creates the run folder (and removes a failed start)

    def elapsed(self) -> float:
        """Rank 0's training time as of the last epoch start or end (the same everywhere)."""
        return self._elapsed_synced

    def _sync_elapsed(self) -> None:
        self._elapsed_synced = _broadcast(super().elapsed(), self.env)

    # -- setup ----------------------------------------------------------------------------
    def setup_run(self) -> None:
        if self.env.main:
            _main_first(self.env, super().setup_run)
            self.cfg["train"]["world_size"] = self.env.world_size
        else:  # rank 0's checks and config (an error there is an error here too)
            _main_first(self.env, lambda: None)
            self.cfg = _broadcast(None, self.env)
            self._fh = logging.NullHandler()
            pkg = logging.getLogger("glandseg")
            self._old_level = pkg.level
            pkg.setLevel(logging.WARNING)
            seed_everything(self.cfg["train"]["seed"])
            return
        _broadcast(self.cfg, self.env)

    def save_config(self) -> None:
        if self.env.main:
            super().save_config()

    def setup_model(self) -> None:
        super().setup_model()  # same seed everywhere; DDP also copies rank 0's weights
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = DDP(self.model, device_ids=ids,
                       find_unused_parameters=self.cfg["task"] == "instances")

    def make_loader(self, stage: dict, generator: torch.Generator) -> DataLoader:
        t = self.cfg["train"]
        per = per_rank_batch(stage["batch_size"], self.env.world_size)
        # this rank's share of the one-process epoch, each crop with its own seed
        # (glandseg.train.seeding): the same crops whatever the world size or workers
        sampler = EpochSampler(len(self.train_ds), t["seed"], rank=self.env.rank,
                               world_size=self.env.world_size)
        generator.manual_seed(generator.initial_seed() + 104_729 * self.env.rank)
        return DataLoader(
            SeededItems(self.train_ds), batch_size=per, sampler=sampler, drop_last=True,
            num_workers=t["workers"], collate_fn=self.task.collate, generator=generator,
            persistent_workers=t["workers"] > 0, worker_init_fn=worker_init)

    # -- epoch hooks ------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        self._sync_elapsed()
        self.loader.sampler.set_epoch(epoch)
        seed = self.cfg["train"]["seed"]
        seed_everything((seed * 1_000_003 + epoch * 1009 + self.env.rank) % 2**32)
        loss = super().train_epoch(epoch)
        # the logged loss: the mean over all processes
        t = torch.tensor([loss], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.env.world_size

    def validate(self) -> dict:
        return _main_first(self.env, super().validate)

    def on_epoch_end(self, row: dict, stage_i: int, epoch: int) -> None:
        self._sync_elapsed()
        if self.env.main:
            super().on_epoch_end(row, stage_i, epoch)
        else:  # the same history and best as rank 0, nothing written
            self.history.append(row)
            self.best = max(self.best, row["val_object_dice"])
            for cb in self.callbacks:
                cb(self, row)

    def _write_logs(self) -> None:
        if self.env.main:
            super()._write_logs()

    def _resume(self) -> tuple[int, int]:
        if self.env.main:
            out = _main_first(self.env, super()._resume)
        else:
            _main_first(self.env, lambda: None)
            self.commit = runstate.read_commit(self.run)
            runstate.load_weights(self.commit, "last", self.model)
            self.history, self.best = list(self.commit.history), self.commit.best
            self.elapsed_before = self.commit.elapsed
            out = self.commit.stage, self.commit.epoch
        self._sync_elapsed()
        return out

    def finish(self) -> None:
        if self.env.main:  # post-processing tuning and the final config: rank 0 alone
            super().finish()
