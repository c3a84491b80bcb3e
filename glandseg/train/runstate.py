"""A training run's checkpoint as one consistent set, committed atomically once per epoch.

Run folder layout (``RUN`` = ``--out``)::

    RUN/checkpoint.json                  the manifest; replacing it is the commit
    RUN/checkpoint/last-e0003.safetensors   model weights after epoch 3
    RUN/checkpoint/state-e0003.safetensors  optimizer moments and torch RNG after epoch 3
    RUN/checkpoint/best-e0002.safetensors   weights of the best validated epoch so far
    RUN/last.safetensors, RUN/best.safetensors   the same weights under their public names
                                         (hard links, or copies), read by predict/export

Commit of epoch N (:func:`commit_epoch`): (1) write the epoch's files under new names,
each to a temporary file that is renamed; (2) write the manifest, naming each file with its
size and SHA-256 plus the epoch, stage, best score and epoch, history and the JSON part of
the optimizer/scheduler/RNG state, to a temporary file renamed onto ``checkpoint.json``:
the commit; (3) publish ``last``/``best.safetensors``; (4) delete files of superseded
epochs and temporary files of killed writes. Until (2) the previous manifest and all the
files it names are untouched, so a kill at any instant leaves the run at the last complete
epoch, never a mix; ``best`` weights and the score that made them best are committed
together. :func:`resume` reads only what the manifest names, verifies the checksums,
republishes and cleans up.

Fault injection: :data:`FAULT`, when set, is called with a label at every point between
two file operations of a commit (tests raise there to simulate a kill).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from glandseg import GlandsegError
from glandseg.train import checkpoint as ckpt

log = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
FOLDER = "checkpoint"
FORMAT = 1
#: Files of the run folder's root whose temporary copies (``.NAME.*``) a kill may leave.
_TEMP_STEMS = ("last", "best", "checkpoint", "last_state", "config", "metrics", "curves")
#: Files that mark a run folder as holding a run (``--resume`` or another ``--out``).
RUN_MARKERS = (MANIFEST, "last_state.json", "last.safetensors", "best.safetensors")

#: Fault-injection hook: ``FAULT(label)`` is called between file operations of a commit.
FAULT: Callable[[str], None] | None = None

_FIX = "delete the run folder (or choose another --out) and train without --resume"


def _point(label: str) -> None:
    if FAULT is not None:
        FAULT(label)


@dataclass
class Commit:
    """What ``checkpoint.json`` says about the last complete epoch of ``run``.

    ``files``: role (``last``, ``state``, ``best``) → ``{"name", "bytes", "sha256"}`` with
    ``name`` relative to ``run``; ``state``: the JSON part of the optimizer, scheduler and
    RNG state (:func:`glandseg.train.checkpoint.train_state`); ``best``: the best pooled
    validation object Dice so far (-1 when no epoch was validated), reached at ``best_epoch``.
    """

    run: Path
    epoch: int
    stage: int
    best: float
    best_epoch: int | None
    elapsed: float
    history: list[dict]
    state: dict
    files: dict[str, dict] = field(default_factory=dict)

    def path(self, role: str) -> Path:
        return self.run / self.files[role]["name"]

    def to_json(self) -> dict:
        return {"format": FORMAT, "epoch": self.epoch, "stage": self.stage, "best": self.best,
                "best_epoch": self.best_epoch, "elapsed": self.elapsed, "files": self.files,
                "history": self.history, "state": self.state}


# --- low-level writes --------------------------------------------------------------------

def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}{path.suffix or '.tmp'}")


def _write_bytes(path: Path, data: bytes, label: str) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, rename it.
    A simulated kill (a ``BaseException`` from :data:`FAULT`) leaves the temporary file,
    as a real one would; ordinary errors remove it."""
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _point(f"{label}: temporary file written")
        os.replace(tmp, path)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    _point(f"{label}: renamed")


def _entry(run: Path, path: Path, data: bytes) -> dict:
    return {"name": path.relative_to(run).as_posix(), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


# --- commit --------------------------------------------------------------------------------

def commit_epoch(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 scaler, *, epoch: int, stage: int, history: list[dict], elapsed: float,
                 best: float, improved: bool, previous: Commit | None,
                 generator: torch.Generator | None = None) -> Commit:
    """Commit the state after ``epoch`` (1-based) of ``stage`` (0-based) as one set
    (``generator``: the data loader's shuffling RNG, saved with the other RNG states).

    ``improved``: this epoch's validation is the new ``best`` (its weights become
    ``best``); otherwise ``best`` stays the file of ``previous`` (the last commit, or None
    for the first). Returns the new :class:`Commit`."""
    run = Path(run)
    folder = run / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"e{epoch:04d}"
    files: dict[str, dict] = {}

    weights = ckpt.weights_tensors(model)
    last = st_save(weights, metadata=ckpt.json_metadata({"epoch": epoch}))
    files["last"] = _entry(run, folder / f"last-{tag}.safetensors", last)
    _write_bytes(folder / f"last-{tag}.safetensors", last, "last weights")
    del last

    tensors, state = ckpt.train_state(optimizer, scheduler, scaler, generator)
    data = st_save(tensors)
    files["state"] = _entry(run, folder / f"state-{tag}.safetensors", data)
    _write_bytes(folder / f"state-{tag}.safetensors", data, "training state")
    del data, tensors

    best_epoch = previous.best_epoch if previous is not None else None
    if improved:
        best_epoch = epoch
        data = st_save(weights, metadata=ckpt.json_metadata({"epoch": epoch,
                                                             "val": history[-1]}))
        files["best"] = _entry(run, folder / f"best-{tag}.safetensors", data)
        _write_bytes(folder / f"best-{tag}.safetensors", data, "best weights")
        del data
    elif previous is not None and "best" in previous.files:
        files["best"] = previous.files["best"]

    commit = Commit(run=run, epoch=epoch, stage=stage, best=best, best_epoch=best_epoch,
                    elapsed=elapsed, history=list(history), state=state, files=files)
    _write_bytes(run / MANIFEST, _manifest_bytes(commit), "manifest")
    _fsync_dir(run)
    _publish(commit)
    _clean(commit)
    return commit


def _manifest_bytes(commit: Commit) -> bytes:
    import json

    text = json.dumps(commit.to_json(), indent=1, default=ckpt._json_default)
    return (text + "\n").encode("utf-8")


def _publish(commit: Commit) -> None:
    """``RUN/last.safetensors`` and ``RUN/best.safetensors`` become the committed files
    (hard links where the file system allows, copies otherwise)."""
    for role in ("last", "best"):
        if role not in commit.files:
            continue
        src, dst = commit.path(role), commit.run / f"{role}.safetensors"
        with contextlib.suppress(OSError):
            if dst.exists() and os.path.samefile(src, dst):
                continue
        tmp = _temp_name(dst)
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            _point(f"publish {role}: temporary file written")
            os.replace(tmp, dst)
        except Exception:
            tmp.unlink(missing_ok=True)
            raise
        _point(f"publish {role}: renamed")


def _clean(commit: Commit) -> None:
    """Delete what no commit needs: files of superseded epochs and temporary files of
    killed writes (in ``RUN/checkpoint/`` everything the manifest does not name; in ``RUN``
    the ``.NAME.*`` temporaries of the files training writes)."""
    keep = {commit.path(role).name for role in commit.files}
    folder = commit.run / FOLDER
    stale = [p for p in sorted(folder.iterdir()) if p.name not in keep] if folder.is_dir() else []
    for stem in _TEMP_STEMS:
        stale += sorted(commit.run.glob(f".{stem}.*"))
    for p in stale:
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
            _point(f"clean: removed {p.name}")


# --- resume --------------------------------------------------------------------------------

def has_commit(run: Path) -> bool:
    return (Path(run) / MANIFEST).is_file()


def read_commit(run: Path) -> Commit:
    """Read ``RUN/checkpoint.json`` (not the files it names: see :func:`read_file`).
    A missing, damaged or foreign manifest is a one-line :class:`GlandsegError`."""
    run = Path(run)
    path = run / MANIFEST
    if not path.is_file():
        if (run / "last_state.json").is_file():
            raise GlandsegError(f"{run}: written by an older glandseg (last_state.json, no "
                                f"{MANIFEST}), which cannot be resumed; train without "
                                "--resume into another --out (its best/last.safetensors "
                                "still predict)")
        raise GlandsegError(f"{run}: nothing to resume (no {MANIFEST}: no epoch was "
                            "completed); drop --resume to start a new run")
    m = ckpt.load_json(path, hint=_FIX)
    try:
        if m.get("format") != FORMAT:
            raise ValueError(f"unknown format {m.get('format')!r}")
        files = {str(role): {"name": str(e["name"]), "bytes": int(e["bytes"]),
                             "sha256": str(e["sha256"])} for role, e in m["files"].items()}
        if not {"last", "state"} <= set(files):
            raise ValueError("it names no last weights or training state")
        for e in files.values():
            name = Path(e["name"])
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(f"file name {e['name']!r} outside the run folder")
        best_epoch = m["best_epoch"]
        commit = Commit(run=run, epoch=int(m["epoch"]), stage=int(m["stage"]),
                        best=float(m["best"]),
                        best_epoch=None if best_epoch is None else int(best_epoch),
                        elapsed=float(m["elapsed"]), history=list(m["history"]),
                        state=dict(m["state"]), files=files)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise GlandsegError(f"{path}: not a glandseg checkpoint manifest "
                            f"({type(exc).__name__}: {ckpt._one_line(exc)}); {_FIX}") from exc
    if commit.epoch < 1 or len(commit.history) != commit.epoch:
        raise GlandsegError(f"{path}: epoch {commit.epoch} with {len(commit.history)} "
                            f"history rows; {_FIX}")
    problem = _check_commit(commit)
    if problem:
        raise GlandsegError(f"{path}: {problem}; {_FIX}")
    return commit


def _check_commit(commit: Commit) -> str | None:
    """What does not fit in a parsed manifest (valid JSON of the right keys), or None:
    history rows that are not flat objects of numbers numbered 1..epoch, a negative stage,
    a best epoch outside 1..epoch, a negative or non-finite elapsed time."""
    for i, row in enumerate(commit.history):
        if not isinstance(row, dict) or not row:
            return f"history row {i + 1} is not an object of numbers ({type(row).__name__})"
        bad = [k for k, v in row.items()
               if not isinstance(v, int | float) or isinstance(v, bool)]
        if bad:
            return f"history row {i + 1}: {bad[0]!r} is not a number"
        if row.get("epoch") != i + 1:
            return f"history row {i + 1} says epoch {row.get('epoch')!r}"
    if commit.stage < 0:
        return f"stage {commit.stage} is negative"
    if commit.best_epoch is not None and not 1 <= commit.best_epoch <= commit.epoch:
        return f"best epoch {commit.best_epoch} is outside epochs 1-{commit.epoch}"
    if not math.isfinite(commit.elapsed) or commit.elapsed < 0:
        return f"elapsed time {commit.elapsed} is not a duration"
    return None


def read_file(commit: Commit, role: str) -> bytes:
    """The bytes of the committed file ``role``, after checking size and SHA-256."""
    path = commit.path(role)
    e = commit.files[role]
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise GlandsegError(f"{path}: missing (named by {commit.run / MANIFEST}); "
                            f"{_FIX}") from exc
    except OSError as exc:
        raise GlandsegError(f"{path}: cannot read ({ckpt._one_line(exc)}); {_FIX}") from exc
    if len(data) != e["bytes"] or hashlib.sha256(data).hexdigest() != e["sha256"]:
        raise GlandsegError(f"{path}: damaged (size or SHA-256 differs from "
                            f"{commit.run / MANIFEST}: {len(data)} bytes, {e['bytes']} "
                            f"recorded); {_FIX}")
    return data


def _tensors(commit: Commit, role: str) -> dict[str, torch.Tensor]:
    data = read_file(commit, role)
    try:
        return st_load(data)
    except Exception as exc:  # checksum matched, so the writer itself was broken
        raise GlandsegError(f"{commit.path(role)}: not a valid safetensors file "
                            f"({ckpt._one_line(exc)}); {_FIX}") from exc


def load_weights(commit: Commit, role: str, model: nn.Module) -> None:
    """Load the committed weights ``role`` (``last`` or ``best``) into ``model``."""
    ckpt.apply_weights(model, _tensors(commit, role), commit.path(role))


def restore_state(commit: Commit, optimizer: torch.optim.Optimizer | None, scheduler,
                  scaler, generator: torch.Generator | None = None) -> None:
    """Restore the committed optimizer, scheduler, loader ``generator`` (where given),
    scaler and RNG states."""
    ckpt.restore_train_state(_tensors(commit, "state"), commit.state, optimizer, scheduler,
                             scaler, source=commit.path("state"), generator=generator)


def resume(run: Path) -> Commit:
    """Read and verify the last commit of ``run`` (every file it names), then republish
    ``last``/``best.safetensors`` and delete leftovers of a killed commit."""
    commit = read_commit(run)
    for role in commit.files:
        read_file(commit, role)
    _publish(commit)
    _clean(commit)
    return commit


LOCK = "train.lock"


class RunLock:
    """An exclusive lock on a run folder while one process trains into it (``train.lock``,
    holding that process's pid; removed on release). A second ``glandseg train`` on the same
    ``--out`` (a new run or ``--resume``) fails at once instead of interleaving checkpoints.
    Advisory ``flock``: local and most network file systems; a no-op where ``fcntl`` is
    missing (Windows)."""

    def __init__(self, run: Path) -> None:
        self.path = Path(run) / LOCK
        self._f = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        f = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise GlandsegError(f"{self.path.parent}: another glandseg train (pid {pid}) is "
                                "writing to this run folder; wait for it to end or choose "
                                "another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._f = f
        return self

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (between :meth:`acquire` and :meth:`release`)."""
        return self._f is not None

    def release(self) -> None:
        if self._f is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._f.close()  # closing drops the flock
        self._f = None


def refuse_existing(run: Path) -> None:
    """A new run must not start over a folder that holds one."""
    run = Path(run)
    found = [n for n in RUN_MARKERS if (run / n).exists()]
    if found:
        raise GlandsegError(f"{run}: a run exists there ({found[0]}); pass --resume to continue "
                            "it or choose another --out")


def run_history(run: Path) -> list[dict]:
    """The per-epoch rows (as in ``metrics.csv``) of the last commit of ``run``; for a run
    of an older glandseg, those of its ``last_state.json``; ``[]`` when neither exists."""
    run = Path(run)
    if (run / MANIFEST).is_file():
        return read_commit(run).history
    if (run / "last_state.json").is_file():
        return list(ckpt.load_json(run / "last_state.json").get("history", []))
    return []
