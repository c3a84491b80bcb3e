"""Kill a training run at every point of an epoch's checkpoint commit, resume it, and check
that it goes on from the last complete epoch and ends exactly where an uninterrupted run
ends (same weights, same best, same metrics rows), with no temporary files left."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glandseg import GlandsegError
from glandseg.train import checkpoint as ckpt
from glandseg.train import runstate
from glandseg.train.loop import TrainConfig, Trainer
from glandseg.train.run import train
from tests.conftest import make_glas_folder

#: Scripted validation object Dice per epoch: epoch 2 is the best, epoch 3 is not.
DICE = {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.65}


class Killed(BaseException):
    """A simulated SIGKILL (a BaseException: no ``except Exception`` clean-up runs)."""


def scripted_validate(self: Trainer) -> dict:
    d = DICE[len(self.history) + 1]
    return {"val_loss": 1 - d, "val_f1": d, "val_object_dice": d, "val_object_hausdorff": 10 * d}


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch):
    """Scripted validation (the commit, not the metrics, is under test), no curve drawing,
    one torch thread (tiny tensors)."""

    monkeypatch.setattr(Trainer, "validate", scripted_validate)
    monkeypatch.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    runstate.FAULT = None


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 training images (patients 1 and 2), 40-43 x 48-50 px."""
    return make_glas_folder(tmp_path_factory.mktemp("glas"),
                            names=[f"train_{i}" for i in range(1, 5)], ext=".png")


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    args = dict(model="unet", data=str(data), out=str(out),
                model_args={"width": 4, "out_channels": 1}, epochs=3, crop=32, scale=1.0,
                workers=0, batch_size=2, repeats=1, tune_postprocess=False, device="cpu")
    args.update(kw)
    return TrainConfig(**args)


def epochs(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def leftovers(run: Path) -> list[str]:
    """Temporary files anywhere, and checkpoint files the manifest does not name."""
    c = runstate.read_commit(run)
    named = {Path(e["name"]).name for e in c.files.values()}
    out = [p.name for p in run.rglob(".*")]
    out += [p.name for p in (run / "checkpoint").iterdir() if p.name not in named]
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted 3-epoch run: its final and best weights and the fault points of
    each epoch's commit."""
    mp = pytest.MonkeyPatch()
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the tests: float sums depend on the thread count
    try:
        mp.setattr(Trainer, "validate", scripted_validate)
        mp.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
        labels: list[str] = []
        starts: list[int] = []  # index in labels where each epoch's commit begins
        commit = runstate.commit_epoch
        mp.setattr(runstate, "commit_epoch",
                   lambda *a, **k: (starts.append(len(labels)), commit(*a, **k))[1])
        mp.setattr(runstate, "FAULT", labels.append)
        run = train(tiny(data, tmp_path_factory.mktemp("ref") / "run"))
    finally:
        mp.undo()
        torch.set_num_threads(n)
    return {"last": load_file(str(run / "last.safetensors")),
            "best": load_file(str(run / "best.safetensors")),
            "labels": labels, "commit_starts": starts}


def test_resume_after_a_kill_at_every_point_of_the_epoch_commit(
        data: Path, tmp_path: Path, reference: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = reference["labels"]
    start, end = reference["commit_starts"][1], reference["commit_starts"][2]
    points = labels[start:end]  # the commit of epoch 2 (a new best)
    assert points[0] == "last weights: temporary file written" and len(points) >= 12
    original_epoch = Trainer.train_epoch
    for k, label in enumerate(points):
        run = tmp_path / f"k{k}"
        count = iter(range(1, 10**6))

        def hook(lab: str, stop: int = start + k + 1, count=count) -> None:
            if next(count) == stop:
                raise Killed(lab)

        runstate.FAULT = hook
        with pytest.raises(Killed) as ei:
            train(tiny(data, run))
        runstate.FAULT = None
        assert ei.value.args == (label,)  # killed at the k-th point of epoch 2's commit
        committed = points.index("manifest: renamed") <= k
        first: list[int] = []

        def spy(self, epoch, first=first):
            first.append(epoch)
            return original_epoch(self, epoch)

        monkeypatch.setattr(Trainer, "train_epoch", spy)
        train(TrainConfig(out=str(run), resume=True, device="cpu"))
        monkeypatch.setattr(Trainer, "train_epoch", original_epoch)
        # resumed after epoch 2 when its manifest was in place, else after epoch 1
        assert first == ([2] if committed else [1, 2]), label
        assert epochs(run) == [1, 2, 3], label
        # bit-identical to the uninterrupted run: no mix of epochs' weights and states
        assert same(load_file(str(run / "last.safetensors")), reference["last"]), label
        assert same(load_file(str(run / "best.safetensors")), reference["best"]), label
        c = runstate.read_commit(run)
        assert (c.epoch, c.best, c.best_epoch) == (3, 0.7, 2), label
        assert ckpt.load_json(run / "config.json")["validation"]["best"]["epoch"] == 2
        assert leftovers(run) == [], label


STAGES = [dict(optimizer="adamw", lr=1e-3, weight_decay=1e-4, batch_size=2, epochs=2,
               momentum=0.9, schedule="cosine"),
          dict(optimizer="sgd", lr=1e-2, weight_decay=0.0, batch_size=2, epochs=2,
               momentum=0.9, schedule="constant")]


@pytest.fixture(scope="module")
def two_stage_reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Final weights of an uninterrupted two-stage run (2 AdamW + 2 SGD epochs)."""
    mp = pytest.MonkeyPatch()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.setattr(Trainer, "validate", scripted_validate)
        mp.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
        run = train(tiny(data, tmp_path_factory.mktemp("ref2") / "run", stages=STAGES))
    finally:
        mp.undo()
        torch.set_num_threads(n)
    return load_file(str(run / "last.safetensors"))


@pytest.mark.parametrize("killed_after", [1, 2, 3])
def test_resume_across_stages_is_exact(data: Path, tmp_path: Path, killed_after: int,
                                       two_stage_reference: dict) -> None:
    """Killed after epoch 1 (mid stage 1), 2 (end of stage 1) or 3 (mid stage 2): the
    resumed run ends with the uninterrupted run's weights, bit for bit."""
    run = tmp_path / "run"
    commits = iter(range(1, 100))

    def hook(label: str) -> None:
        if label == "manifest: renamed" and next(commits) == killed_after:
            raise Killed(label)

    runstate.FAULT = hook
    with pytest.raises(Killed):
        train(tiny(data, run, stages=STAGES))
    runstate.FAULT = None
    assert runstate.read_commit(run).epoch == killed_after
    train(TrainConfig(out=str(run), resume=True, device="cpu"))
    assert epochs(run) == [1, 2, 3, 4]
    assert same(load_file(str(run / "last.safetensors")), two_stage_reference)


@pytest.mark.slow  # a fresh interpreter importing torch: ~10 s on 2 busy cores
def test_a_real_sigkill_between_files_and_manifest(data: Path, tmp_path: Path) -> None:
    """The process really dies (SIGKILL) after epoch 2's files, before its manifest."""
    run = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from glandseg.train import runstate
        from glandseg.train.loop import TrainConfig, Trainer
        from glandseg.train.run import train
        torch.set_num_threads(1)
        Trainer.validate = lambda self: {{"val_loss": 0.0, "val_f1": 0.0,
            "val_object_dice": {DICE}[len(self.history) + 1], "val_object_hausdorff": 0.0}}
        seen = []
        def die(label):
            seen.append(label)
            if label == "manifest: temporary file written" and seen.count(label) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        runstate.FAULT = die
        train(TrainConfig(model="unet", data={str(data)!r}, out={str(run)!r},
              model_args={{"width": 4, "out_channels": 1}}, epochs=3, crop=32, scale=1.0,
              workers=0, batch_size=2, repeats=1, tune_postprocess=False, device="cpu"))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert runstate.read_commit(run).epoch == 1
    assert sorted(p.name for p in (run / "checkpoint").glob("*-e0002.safetensors")) == [
        "best-e0002.safetensors", "last-e0002.safetensors", "state-e0002.safetensors"]
    assert [p.name for p in run.glob(".checkpoint.*.json")]  # the killed manifest write
    train(TrainConfig(out=str(run), resume=True, device="cpu"))
    assert epochs(run) == [1, 2, 3] and runstate.read_commit(run).epoch == 3
    assert leftovers(run) == []


def test_resume_refuses_a_damaged_checkpoint(data: Path, tmp_path: Path) -> None:
    run = train(tiny(data, tmp_path / "run", epochs=2))
    state = runstate.read_commit(run).path("state")
    state.write_bytes(state.read_bytes()[:100])  # truncated
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(GlandsegError, match="damaged") as ei:
        train(TrainConfig(out=str(run), resume=True, device="cpu"))
    assert str(ei.value).startswith(str(state)) and "\n" not in str(ei.value)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written or removed
    import logging  # and train.log was closed: no handler left on the package logger

    assert not [h for h in logging.getLogger("glandseg").handlers
                if isinstance(h, logging.FileHandler)]


def test_resume_with_a_damaged_config(data: Path, tmp_path: Path) -> None:
    run = train(tiny(data, tmp_path / "run", epochs=1))
    (run / "config.json").write_text('{"model": "unet"}')
    with pytest.raises(GlandsegError, match="no training arguments"):
        train(TrainConfig(out=str(run), resume=True, device="cpu"))
    (run / "config.json").write_text("[]")
    with pytest.raises(GlandsegError, match="expected a JSON object"):
        train(TrainConfig(out=str(run), resume=True, device="cpu"))
