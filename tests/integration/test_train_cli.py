"""`glandseg train` end to end on a tiny synthetic GlaS-like folder: the command itself (a
subprocess), the run folder it writes, `--resume`, and one-line errors for bad options and
damaged checkpoints."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glandseg.cli import main
from glandseg.train import runstate
from tests.conftest import make_glas_folder

ROOT = Path(__file__).resolve().parents[2]
#: A width-4 U-Net on 32 px crops: a few seconds per epoch.
TINY = ["--model", "unet", "--model-args", '{"width": 4}', "--pretrained", "none",
        "--crop", "32", "--scale", "1", "--workers", "0", "--batch-size", "2",
        "--repeats", "1", "--no-tune", "--device", "cpu", "-q"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 training images of patients 1 and 2 (one is held out for validation)."""
    return make_glas_folder(tmp_path_factory.mktemp("glas"),
                            names=[f"train_{i}" for i in range(1, 5)], ext=".png")


def epochs(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_train_one_epoch_command(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "glandseg", "train", "--data", str(data),
                           "--out", str(run), "--epochs", "1", *TINY],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"run folder: {run}"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors", "checkpoint", "checkpoint.json", "config.json", "curves.png",
        "last.safetensors", "metrics.csv", "train.log"]
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "best-e0001.safetensors", "last-e0001.safetensors", "state-e0001.safetensors"]
    assert epochs(run) == [1]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "unet" and cfg["model_args"]["width"] == 4
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["crop"] == 32
    assert cfg["validation"]["best"]["epoch"] == 1  # finish() ran
    c = runstate.read_commit(run)
    assert c.epoch == 1 and c.best_epoch == 1
    # the run folder predicts: `--model RUN` loads best.safetensors with its config
    from glandseg.train.checkpoint import load_model

    model, _ = load_model(str(run))
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_stop_and_resume(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    # --max-minutes 0 stops (cleanly) after the first of two epochs
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "2",
                 "--max-minutes", "0", *TINY]) == 0
    assert epochs(run) == [1] and runstate.read_commit(run).epoch == 1
    # a new run into the same folder is refused, and changes nothing
    before = (run / "checkpoint.json").read_bytes()
    assert main(["train", "--data", str(data), "--out", str(run), *TINY]) == 1
    assert "a run exists there" in capsys.readouterr().err
    assert (run / "checkpoint.json").read_bytes() == before
    # --resume needs no --data: the run's config has it
    assert main(["train", "--out", str(run), "--resume", "--max-minutes", "60", "-q"]) == 0
    assert epochs(run) == [1, 2]
    c = runstate.read_commit(run)
    assert c.epoch == 2 and [h["epoch"] for h in c.history] == [1, 2]
    assert "resuming after epoch 1" in (run / "train.log").read_text()
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == sorted(
        {"last-e0002.safetensors", "state-e0002.safetensors",
         f"best-e{c.best_epoch:04d}.safetensors"})


def _err(capsys: pytest.CaptureFixture, argv: list[str], code: int = 1) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_resume_errors_are_one_line(data: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert "nothing to resume" in _err(capsys, ["train", "--out", str(run), "--resume"])
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1",
                 *TINY]) == 0
    last = runstate.read_commit(run).path("last")
    last.write_bytes(last.read_bytes()[:-10])  # truncated
    err = _err(capsys, ["train", "--out", str(run), "--resume"])
    assert f"{last}: damaged" in err and "delete the run folder" in err
    (run / "checkpoint.json").write_text("{")
    err = _err(capsys, ["train", "--out", str(run), "--resume"])
    assert f"{run / 'checkpoint.json'}: invalid JSON" in err


@pytest.mark.parametrize("option,value,code,message", [
    ("--epochs", "0", 2, "--epochs: must be from 1"),
    ("--batch-size", "-1", 2, "--batch-size: must be from 1"),
    ("--lr", "0", 2, "--lr: must be above 0"),
    ("--lr", "nan", 2, "--lr: must be above 0"),
    ("--scale", "0", 2, "--scale: must be above 0"),
    ("--tile", "-5", 2, "--tile: must be from 64"),
    ("--val-fraction", "1", 2, "--val-fraction: must be above 0 and at most 0.9"),
    ("--crop", "40", 1, "--crop 40 is not a multiple of 16"),
    ("--model-args", "[4]", 1, "--model-args must be a JSON object"),
])
def test_bad_options_are_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                  option: str, value: str, code: int, message: str) -> None:
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
            *TINY, option, value]
    if code == 2:
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
    else:
        err = _err(capsys, argv)
    assert message in err, err
    assert not (tmp_path / "run").exists()  # a failed start leaves no run folder


def test_data_is_required_without_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "--data is required" in _err(capsys, ["train", "--out", str(tmp_path / "r")])
