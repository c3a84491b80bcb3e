"""Sharp edges of ``glandseg train`` on small, full or damaged inputs: a batch larger than an
epoch, a failed start, ``--resume`` with loader workers, a full disk, run state that is valid
JSON but not a run's, ``-q`` and ``--help`` (a width-4 U-Net on 4 synthetic images, CPU)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from glandseg import GlandsegError
from glandseg.train import checkpoint as ckpt
from glandseg.train import runstate
from glandseg.train.loop import TrainConfig, Trainer
from glandseg.train.run import train
from glandseg.train.seeding import EpochSampler, SeededItems
from tests.conftest import make_glas_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_curves(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
    yield
    runstate.FAULT = None


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 training images of 2 patients: one patient (2 images) is held out, so an epoch
    holds 2 crops per repeat."""
    return make_glas_folder(tmp_path_factory.mktemp("glas"),
                            names=[f"train_{i}" for i in range(1, 5)], ext=".png")


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    args = dict(model="unet", data=str(data), out=str(out),
                model_args={"width": 4, "out_channels": 1}, epochs=1, crop=32, scale=1.0,
                workers=0, batch_size=2, repeats=1, tune_postprocess=False, device="cpu")
    args.update(kw)
    return TrainConfig(**args)


class Killed(BaseException):
    """A simulated SIGKILL (no ``except Exception`` clean-up runs)."""


def kill_after_commit(n: int):
    """A :data:`runstate.FAULT` hook that dies right after the ``n``-th epoch is committed."""
    commits = iter(range(1, 10**6))

    def hook(label: str) -> None:
        if label == "manifest: renamed" and next(commits) == n:
            raise Killed(label)

    return hook


# --- 1. a batch larger than an epoch ---------------------------------------------------------

def test_a_batch_larger_than_an_epoch_is_lowered_and_said_once(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="glandseg")
    run = train(tiny(data, tmp_path / "run", batch_size=8, repeats=2, epochs=2,
                     max_minutes=1e-9))  # stops after epoch 1
    cfg = ckpt.load_json(run / "config.json")
    assert cfg["train"]["stages"][0]["batch_size"] == 4  # 2 images x 2 repeats
    assert cfg["train"]["notes"] == [
        "batch size 8 lowered to 4, the training crops of an epoch (2 images x 2 repeats); "
        "raise --repeats to keep a larger batch"]
    said = [r for r in caplog.records if "lowered to 4" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert (run / "train.log").read_text().count("lowered to 4") == 1
    caplog.clear()
    train(TrainConfig(out=str(run), resume=True, device="cpu", max_minutes=60))  # epoch 2
    assert runstate.read_commit(run).epoch == 2
    assert not [r for r in caplog.records if "lowered" in r.getMessage()]  # not said again
    assert len(ckpt.load_json(run / "config.json")["train"]["notes"]) == 1


# --- 2. a failed start leaves no half-made run folder ----------------------------------------

def test_a_failed_start_removes_the_folders_it_made(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(GlandsegError, match="--crop 40 is not a multiple of 16"):
        train(tiny(data, out, crop=40))  # fails after config.json and train.log were written
    assert not (tmp_path / "a").exists()
    with pytest.raises(GlandsegError, match=r"tile must be an integer in \[64, 8192\]"):
        train(tiny(data, out, tile=32))  # the typed config refuses it before anything
    assert not (tmp_path / "a").exists()


def test_a_failed_start_keeps_a_folder_that_existed(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(GlandsegError, match="not a multiple"):
        train(tiny(data, out, crop=40))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "my notes"


def test_a_crash_in_the_first_epoch_removes_the_run_but_not_after_a_commit(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Trainer.train_epoch

    def crash_at(n: int):
        def epoch(self: Trainer, e: int) -> float:
            if e + 1 == n:
                raise RuntimeError("boom")
            return real(self, e)
        return epoch

    monkeypatch.setattr(Trainer, "train_epoch", crash_at(1))
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny(data, tmp_path / "first", epochs=2))
    assert not (tmp_path / "first").exists()  # nothing to resume: nothing left
    monkeypatch.setattr(Trainer, "train_epoch", crash_at(2))
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny(data, tmp_path / "second", epochs=2))
    assert runstate.read_commit(tmp_path / "second").epoch == 1  # kept, to resume
    monkeypatch.setattr(Trainer, "train_epoch", real)
    train(TrainConfig(out=str(tmp_path / "second"), resume=True, device="cpu"))
    assert runstate.read_commit(tmp_path / "second").epoch == 2


def test_a_kill_in_the_first_commit_after_its_manifest_keeps_the_run(
        data: Path, tmp_path: Path) -> None:
    runstate.FAULT = kill_after_commit(1)
    with pytest.raises(Killed):
        train(tiny(data, tmp_path / "run", epochs=2))
    runstate.FAULT = None
    assert runstate.read_commit(tmp_path / "run").epoch == 1  # committed: never removed


# --- 3. --resume with loader workers ---------------------------------------------------------

def test_epoch_sampler_draws_each_epoch_from_seed_and_epoch_alone() -> None:
    a, b = EpochSampler(12, seed=3), EpochSampler(12, seed=3)
    a.set_epoch(5)
    for e in (0, 1, 2, 5):  # b went through other epochs first
        b.set_epoch(e)
        list(b)
    assert list(a) == list(b)
    assert sorted(i for i, _ in a) == list(range(12))
    b.set_epoch(6)
    assert list(a) != list(b)
    assert list(EpochSampler(12, seed=4)) != list(EpochSampler(12, seed=3))
    # two ranks take every other crop of the one-process epoch, with the same crop seeds
    r0, r1 = EpochSampler(12, 3, 0, 2), EpochSampler(12, 3, 1, 2)
    for s in (r0, r1):
        s.set_epoch(5)
    assert len(r0) == len(list(r0)) == 6
    assert [x for pair in zip(r0, r1, strict=True) for x in pair] == list(a)


def test_seeded_items_are_the_same_anywhere_and_leave_the_main_rng_alone() -> None:
    class Noise(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return torch.rand(4) + i, float(np.random.rand()), random.random()

    items = SeededItems(Noise())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = items[(1, 42)]
    assert torch.equal(torch.get_rng_state(), before)  # the model's stream is not consumed
    torch.rand(10)
    again = items[(1, 42)]
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert not torch.equal(items[(1, 43)][0], first[0])
    loader = torch.utils.data.DataLoader(items, sampler=[(1, 42)], batch_size=None,
                                         num_workers=1)
    in_worker = next(iter(loader))
    assert torch.equal(in_worker[0], first[0]) and list(in_worker[1:]) == list(first[1:])


def test_resume_with_two_loader_workers_is_bit_identical(data: Path, tmp_path: Path) -> None:
    """Killed after epoch 2 of 4 and resumed, with 2 persistent loader workers and full
    augmentation: every tensor of the final weights and training state equals an
    uninterrupted run's (the default loader used to differ in all of them)."""
    cfg = dict(epochs=4, workers=2, repeats=2, batch_size=2)
    full = train(tiny(data, tmp_path / "full", **cfg))
    runstate.FAULT = kill_after_commit(2)
    with pytest.raises(Killed):
        train(tiny(data, tmp_path / "half", **cfg))
    runstate.FAULT = None
    half = tmp_path / "half"
    assert runstate.read_commit(half).epoch == 2
    train(TrainConfig(out=str(half), resume=True, device="cpu"))
    a, b = runstate.read_commit(full), runstate.read_commit(half)
    assert a.epoch == b.epoch == 4
    for role in ("last", "state"):
        ta, tb = load_file(str(a.path(role))), load_file(str(b.path(role)))
        assert ta.keys() == tb.keys() and len(ta) > 10
        differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert differ == [], f"{len(differ)} of {len(ta)} {role} tensors differ"
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


# --- 4. a full disk --------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_write_is_one_line_and_keeps_the_last_epoch(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    real = runstate._write_bytes
    calls: list[str] = []

    def write(path: Path, data_: bytes, label: str) -> None:
        calls.append(label)
        if label == "last weights" and calls.count(label) == 2:  # epoch 2's first file
            tmp = path.with_name(f".{path.stem}.dead{path.suffix}")
            tmp.write_bytes(data_[:10])  # what a full disk leaves ...
            tmp.unlink()  # ... and the writer removes
            raise OSError(code, os.strerror(code), str(path))
        real(path, data_, label)

    monkeypatch.setattr(runstate, "_write_bytes", write)
    run = tmp_path / "run"
    with pytest.raises(GlandsegError) as ei:
        train(tiny(data, run, epochs=3))
    msg = str(ei.value)
    assert msg.startswith(f"{run}: cannot write the run folder: {os.strerror(code)}")
    assert "the last complete epoch (1) is kept" in msg and "--resume" in msg
    assert "\n" not in msg
    assert runstate.read_commit(run).epoch == 1  # the last commit, intact and verified
    runstate.resume(run)
    monkeypatch.setattr(runstate, "_write_bytes", real)
    train(TrainConfig(out=str(run), resume=True, device="cpu"))
    assert runstate.read_commit(run).epoch == 3
    assert not [p for p in run.rglob(".*")]


def test_a_failed_first_write_is_one_line_and_leaves_nothing(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path, obj) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt, "save_json", full)
    run = tmp_path / "run"
    with pytest.raises(GlandsegError, match=r"cannot write the run folder: No space left on "
                                            r"device .*config.json.*no epoch was completed"):
        train(tiny(data, run))
    assert not run.exists()


# --- 5. damaged run state that is valid JSON -------------------------------------------------

@pytest.fixture(scope="module")
def stopped(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 3 epochs stopped by its time budget after epoch 1 (resumable)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
        return train(tiny(data, tmp_path_factory.mktemp("stopped") / "run", epochs=3,
                          max_minutes=1e-9))
    finally:
        mp.undo()
        torch.set_num_threads(n)


def damaged(stopped: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``stopped`` whose manifest ``edit(manifest)`` changed."""
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    m = json.loads((run / runstate.MANIFEST).read_text())
    edit(m)
    (run / runstate.MANIFEST).write_text(json.dumps(m))
    return run


def refused(run: Path, *words: str) -> str:
    manifest = (run / runstate.MANIFEST).read_bytes()
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(GlandsegError) as ei:
        train(TrainConfig(out=str(run), resume=True, device="cpu", max_minutes=60))
    msg = str(ei.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    # a refused resume removes nothing and commits nothing
    assert sorted(p.name for p in run.rglob("*")) == before
    assert (run / runstate.MANIFEST).read_bytes() == manifest
    return msg


@pytest.mark.parametrize("row, words", [
    ([1, 2, 3], "history row 1 is not an object"),
    ({"epoch": 1, "stage": 1, "val_f1": "high"}, "'val_f1' is not a number"),
    ({"epoch": 1, "stage": 1, "nested": {"a": 1}}, "'nested' is not a number"),
    ({"epoch": 2, "stage": 1}, "history row 1 says epoch 2"),
    ({"epoch": 1, "stage": 1}, "history row 1 has other fields than metrics.csv's"),
])
def test_history_rows_of_the_wrong_shape(stopped: Path, tmp_path: Path, row, words: str) -> None:
    run = damaged(stopped, tmp_path, lambda m: m.update(history=[row]))
    refused(run, str(run / runstate.MANIFEST), words)


def test_a_stage_out_of_range(stopped: Path, tmp_path: Path) -> None:
    run = damaged(stopped, tmp_path, lambda m: m.update(stage=7))
    refused(run, str(run / runstate.MANIFEST), "epoch 1 belongs to stage 0", "not 7")
    run2 = damaged(stopped, tmp_path / "neg", lambda m: m.update(stage=-1))
    refused(run2, "stage -1 is negative")


def test_an_epoch_past_the_run(stopped: Path, tmp_path: Path) -> None:
    def edit(m: dict) -> None:
        row = m["history"][0]
        m["epoch"] = 4
        m["history"] = [{**row, "epoch": e} for e in range(1, 5)]

    run = damaged(stopped, tmp_path, edit)
    refused(run, "epoch 4 is past the run's 3 epochs")


def test_a_resigned_state_tensor_of_the_wrong_shape(stopped: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    c = runstate.read_commit(run)
    tensors = load_file(str(c.path("state")))
    key = next(k for k in tensors if k.endswith(".exp_avg") and tensors[k].ndim == 4)
    tensors[key] = torch.zeros(3, 2)
    save_file(tensors, str(c.path("state")))
    data_ = c.path("state").read_bytes()
    m = json.loads((run / runstate.MANIFEST).read_text())
    m["files"]["state"].update(bytes=len(data_), sha256=hashlib.sha256(data_).hexdigest())
    (run / runstate.MANIFEST).write_text(json.dumps(m))
    refused(run, str(c.path("state")), "does not fit this run", "'exp_avg' has shape (3, 2)")


def test_a_scheduler_state_of_the_wrong_shape(stopped: Path, tmp_path: Path) -> None:
    run = damaged(stopped, tmp_path, lambda m: m["state"].update(scheduler=[1, 2]))
    refused(run, "does not fit this run", "scheduler state has other fields")
    run2 = damaged(stopped, tmp_path / "b",
                   lambda m: m["state"]["scheduler"].update(last_epoch="x"))
    refused(run2, "scheduler state's 'last_epoch' is not a number")


@pytest.mark.parametrize("name", [runstate.MANIFEST, "config.json"])
def test_a_100000_deep_json(stopped: Path, tmp_path: Path, name: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    (run / name).write_text("[" * 100_000 + "]" * 100_000)
    refused(run, str(run / name), "nested too deeply")


# --- -q and --help ---------------------------------------------------------------------------

def _cli_train(data: Path, out: Path, *flags: str) -> list[str]:
    """``glandseg [flags] train`` on the tiny set; returns the console's log lines."""
    from glandseg.cli import main

    stream = io.StringIO()
    console = logging.StreamHandler(stream)
    root, pkg = logging.getLogger(), logging.getLogger("glandseg")
    levels = root.level, pkg.level
    root.addHandler(console)
    root.setLevel(logging.INFO)  # what the CLI's logging.basicConfig sets up
    try:
        assert main([*flags, "train", "--model", "unet", "--model-args",
                     '{"width": 4, "out_channels": 1}', "--data", str(data), "--out", str(out),
                     "--epochs", "1", "--crop", "32", "--scale", "1", "--workers", "0",
                     "--repeats", "1", "--no-tune", "--device", "cpu"]) == 0
    finally:
        root.removeHandler(console)
        root.setLevel(levels[0])
        pkg.setLevel(levels[1])
    assert pkg.propagate and not [h for h in pkg.handlers if type(h).__name__ == "_Forward"]
    return stream.getvalue().splitlines()


def test_quiet_train_hides_info_lines_and_the_progress_bar(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import glandseg.train.loop as loop

    bars: list[dict] = []
    real = loop.tqdm
    monkeypatch.setattr(loop, "tqdm", lambda it, **kw: bars.append(kw) or real(it, **kw))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    loud = _cli_train(data, tmp_path / "loud")
    assert any("epoch 1:" in line for line in loud)  # INFO reaches the console ...
    assert bars[-1]["disable"] is None and bars[-1]["desc"] == "epoch 1/1"
    quiet = _cli_train(data, tmp_path / "quiet", "-q")
    assert [line for line in quiet if "lowered to 2" in line]  # ... warnings with -q too
    assert not [line for line in quiet if "epoch" in line and "lowered" not in line]
    assert bars[-1]["disable"] is True  # -q: no bar, even on a terminal
    assert "epoch 1:" in (tmp_path / "quiet" / "train.log").read_text()  # the log keeps INFO


def test_train_help_shows_the_defaults(capsys: pytest.CaptureFixture) -> None:
    from glandseg.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["train", "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    helps: dict[str, str] = {}  # option -> its help text, whitespace normalised
    for block in out.split("\n  -")[1:]:
        option = block.split()[0].rstrip(",")
        helps[option] = " ".join(block.split())
    for option, default in [("-epochs", "100"), ("-batch-size", "8"), ("-lr", "0.001"),
                            ("-optimizer", "adamw"), ("-seed", "0"), ("-workers", "2"),
                            ("-repeats", "2"), ("-crop", "256"), ("-device", "auto"),
                            ("-val-every", "1")]:
        assert f"(default: {default})" in helps[option], (option, helps[option])
    assert "(default: None)" not in out and "(default: False)" not in out
