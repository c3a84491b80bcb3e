"""The training engine on a tiny synthetic GlaS-like folder (width-4 U-Net, CPU, seconds)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glandseg import GlandsegError
from glandseg.infer.postprocess import probs_to_labels
from glandseg.train import checkpoint as ckpt
from glandseg.train import runstate
from glandseg.train.loop import CSV_FIELDS, TrainConfig, Trainer
from glandseg.train.run import train
from glandseg.train.tune import GRIDS, tune_postprocess
from tests.conftest import make_glas_folder

RUN_FILES = {"config.json", "best.safetensors", "last.safetensors", "metrics.csv", "curves.png",
             "train.log", "checkpoint.json", "checkpoint"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 training images of ~64 px, patients 1-4 (two images each), 3 glands per image."""
    root = tmp_path_factory.mktemp("glas")
    return make_glas_folder(root, names=[f"train_{i}" for i in range(1, 9)], size=(64, 64),
                            ext=".png", n_glands=3)


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    args = dict(model="unet", data=str(data), out=str(out),
                model_args={"width": 4, "out_channels": 1}, epochs=2, crop=48, scale=1.0,
                workers=0, batch_size=2, repeats=1, tune_postprocess=False, device="cpu")
    args.update(kw)
    return TrainConfig(**args)


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_epoch_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run through the Python API with logging left as Python starts it (root at
    WARNING, nothing configured), as in a script or notebook."""
    root, pkg = logging.getLogger(), logging.getLogger("glandseg")
    levels = root.level, pkg.level
    root.setLevel(logging.WARNING)
    pkg.setLevel(logging.NOTSET)
    try:
        return train(tiny(data, tmp_path_factory.mktemp("runs") / "unet"))
    finally:
        root.setLevel(levels[0])
        pkg.setLevel(levels[1])


@pytest.fixture
def info_logging(caplog: pytest.LogCaptureFixture) -> None:
    """Logging at INFO for glandseg, as the CLI configures it."""
    caplog.set_level(logging.INFO, logger="glandseg")


def test_run_folder_contents(two_epoch_run: Path) -> None:
    run = two_epoch_run
    assert {p.name for p in run.iterdir()} == RUN_FILES  # and no temp files
    cfg = ckpt.load_json(run / "config.json")
    assert cfg["model"] == "unet" and cfg["task"] == "binary"
    assert cfg["model_args"]["width"] == 4 and cfg["preprocess"]["scale"] == 1.0
    assert cfg["train"]["epochs"] == 2 and len(cfg["train"]["stages"]) == 1
    # patient split: no patient on both sides, and every training image is on one side
    tr, va = cfg["train"]["train_images"], cfg["train"]["val_images"]
    assert va and tr and not set(tr) & set(va)
    assert sorted(tr + va) == sorted(f"train_{i}" for i in range(1, 9))
    r = rows(run)
    assert [int(x["epoch"]) for x in r] == [1, 2]
    assert list(r[0]) == CSV_FIELDS
    assert all(np.isfinite(float(x["train_loss"])) for x in r)
    # the committed checkpoint: epoch 2, the CSV's rows, the best row's Dice and epoch
    c = runstate.read_commit(run)
    assert c.epoch == 2 and [h["epoch"] for h in c.history] == [1, 2]
    dice = [float(x["val_object_dice"]) for x in r]
    assert [h["val_object_dice"] for h in c.history] == pytest.approx(dice)
    assert c.best == pytest.approx(max(dice)) and c.best_epoch == 1 + dice.index(max(dice))
    assert cfg["validation"]["best"]["epoch"] == c.best_epoch
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == sorted(
        {"last-e0002.safetensors", "state-e0002.safetensors",
         f"best-e{c.best_epoch:04d}.safetensors"})
    for role in ("last", "best"):  # the public files are the committed ones
        assert (run / f"{role}.safetensors").read_bytes() == c.path(role).read_bytes()
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "train.log").is_file()


def test_weights_load_into_the_configured_model(two_epoch_run: Path) -> None:
    model, cfg = ckpt.load_model(str(two_epoch_run))
    assert sum(p.numel() for p in model.parameters()) < 200_000  # width 4, not 64
    from safetensors import safe_open

    with safe_open(str(two_epoch_run / "best.safetensors"), "pt") as f:
        best_epoch = json.loads(f.metadata()["epoch"])
    with safe_open(str(two_epoch_run / "last.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["epoch"]) == 2
    r = rows(two_epoch_run)
    dice = [float(x["val_object_dice"]) for x in r]
    assert dice[best_epoch - 1] == max(dice)  # best = first epoch reaching the best Dice


def test_train_log_has_epochs_without_logging_config(two_epoch_run: Path) -> None:
    log = (two_epoch_run / "train.log").read_text()
    assert "epoch 1:" in log and "epoch 2:" in log


def test_no_log_handler_left_behind(two_epoch_run: Path) -> None:
    handlers = logging.getLogger("glandseg").handlers
    assert not [h for h in handlers if isinstance(h, logging.FileHandler)]


def test_new_run_into_existing_folder_errors(two_epoch_run: Path, data: Path) -> None:
    before = (two_epoch_run / "metrics.csv").read_bytes()
    with pytest.raises(GlandsegError, match="--resume"):
        train(tiny(data, two_epoch_run))
    assert (two_epoch_run / "metrics.csv").read_bytes() == before


def test_resume_without_a_run_errors(tmp_path: Path, data: Path) -> None:
    with pytest.raises(GlandsegError, match="nothing to resume"):
        train(tiny(data, tmp_path / "empty", resume=True))


class Killed(Exception):
    pass


def test_kill_and_resume(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         info_logging: None) -> None:
    run = tmp_path / "killed"
    original_end = Trainer.on_epoch_end

    def end_then_die(self, row, stage_i, epoch):
        original_end(self, row, stage_i, epoch)
        if epoch == 0:
            raise Killed  # the process dies right after epoch 1 is saved

    monkeypatch.setattr(Trainer, "on_epoch_end", end_then_die)
    with pytest.raises(Killed):
        train(tiny(data, run, epochs=3))
    monkeypatch.undo()
    assert [int(x["epoch"]) for x in rows(run)] == [1]
    assert "validation" not in ckpt.load_json(run / "config.json")  # finish() never ran
    saved = load_file(str(run / "last.safetensors"))

    ran: list[int] = []
    original_epoch = Trainer.train_epoch

    def spy(self, epoch):
        if not ran:  # the resumed model starts from the weights saved after epoch 1
            for k, v in self.model.state_dict().items():
                torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
        ran.append(epoch)
        return original_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", spy)
    train(TrainConfig(out=str(run), resume=True, device="cpu"))
    assert ran == [1, 2]  # epochs 2 and 3 (0-based 1, 2); epoch 1 is not redone
    r = rows(run)
    assert [int(x["epoch"]) for x in r] == [1, 2, 3]
    assert runstate.read_commit(run).epoch == 3
    assert "resuming after epoch 1" in (run / "train.log").read_text()
    assert "validation" in ckpt.load_json(run / "config.json")


def test_time_budget_stops_after_an_epoch(data: Path, tmp_path: Path, info_logging: None) -> None:
    run = train(tiny(data, tmp_path / "budget", epochs=3, max_minutes=1e-9))
    assert [int(x["epoch"]) for x in rows(run)] == [1]
    assert "time budget" in (run / "train.log").read_text()
    assert "best" in ckpt.load_json(run / "config.json")["validation"]  # finished cleanly


def test_zero_budget_stops_after_first_epoch(data: Path, tmp_path: Path) -> None:
    run = train(tiny(data, tmp_path / "zero", epochs=2, max_minutes=0))
    assert [int(x["epoch"]) for x in rows(run)] == [1]


def test_resume_after_budget_stop_finishes(data: Path, tmp_path: Path) -> None:
    run = train(tiny(data, tmp_path / "budget2", epochs=3, max_minutes=1e-9))
    assert len(rows(run)) == 1
    # A resumed run keeps its stored budget unless the resuming call gives a new one.
    train(tiny(data, run, epochs=3, max_minutes=60, resume=True))
    assert [int(x["epoch"]) for x in rows(run)] == [1, 2, 3]


def test_contour_lite0_trains_one_epoch_and_tunes(data: Path, tmp_path: Path) -> None:
    run = train(TrainConfig(model="unet-lite0", data=str(data), out=str(tmp_path / "lite"),
                            epochs=1, crop=64, scale=1.0, workers=0, batch_size=2, repeats=1,
                            pretrained=False, tune_postprocess=True, device="cpu"))
    cfg = ckpt.load_json(run / "config.json")
    assert cfg["task"] == "contour" and cfg["model_args"]["out_channels"] == 3
    assert [int(x["epoch"]) for x in rows(run)] == [1]
    grid = GRIDS["contour"]
    # every parameter is saved: the grid's tuned, the rest (boundary_weight) as scored
    assert set(cfg["postprocess"]) == set(grid) | {"boundary_weight"}
    assert all(cfg["postprocess"][k] in grid[k] for k in grid)
    assert cfg["postprocess"]["boundary_weight"] == 0.0
    model, _ = ckpt.load_model(str(run))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    # the recorded tuned score is what the saved model and post-processing really give
    from glandseg.data.discover import discover
    from glandseg.data.io import read_image, read_label
    from glandseg.infer.predictor import Predictor
    from glandseg.metrics.score import score_pairs

    val = [s for s in discover(data, splits=("train",)) if s.name in cfg["train"]["val_images"]]
    pred = Predictor(model, cfg, "cpu")
    items = [(s.name, pred.predict(read_image(s.image)), read_label(s.anno)) for s in val]
    pooled = next(iter(score_pairs(items).values()))["pooled"]
    assert pooled["object_dice"] == pytest.approx(cfg["validation"]["tuned_object_dice"],
                                                  abs=1e-6)


class FakePredictor:
    """Duck-typed predictor with hand-made probabilities: foreground 0.65 in disc A, 0.45 in
    disc B, 0.35 on a ring around them, 0.05 elsewhere. Only threshold 0.4 finds exactly A
    and B, and the discs (~450 px) survive min_area 100 and 300 but not 600."""

    task = "binary"

    def __init__(self) -> None:
        yy, xx = np.mgrid[:64, :96]
        self.a = (yy - 32) ** 2 + (xx - 24) ** 2 <= 12**2
        self.b = (yy - 32) ** 2 + (xx - 70) ** 2 <= 12**2
        ring = ((yy - 32) ** 2 + (xx - 24) ** 2 <= 16**2) | ((yy - 32) ** 2 + (xx - 70) ** 2 <= 16**2)
        p = np.full((64, 96), 0.05, np.float32)
        p[ring] = 0.35
        p[self.a], p[self.b] = 0.65, 0.45
        self.p = p[None]

    def truth(self) -> np.ndarray:
        return (self.a * 1 + self.b * 2).astype(np.int32)

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        return self.p

    def postprocess(self, probs: np.ndarray, params: dict) -> np.ndarray:
        return probs_to_labels(probs, self.task, params)


def test_tune_postprocess_picks_the_right_grid_point() -> None:
    fake = FakePredictor()
    image = np.zeros((64, 96, 3), np.uint8)
    params, dice = tune_postprocess(fake, [("train_1", image, fake.truth())])
    grid = GRIDS["binary"]
    assert set(params) == set(grid) and all(params[k] in grid[k] for k in grid)
    assert params["foreground_threshold"] == 0.4
    assert params["min_area"] in (100, 300)
    assert dice == pytest.approx(1.0)


def test_tune_postprocess_custom_grid() -> None:
    fake = FakePredictor()
    image = np.zeros((64, 96, 3), np.uint8)
    grid = {"foreground_threshold": [0.7, 0.5], "min_area": [10], "split_h": [0.0],
            "fill_holes": [True]}
    params, dice = tune_postprocess(fake, [("train_1", image, fake.truth())], grid)
    assert params == {"foreground_threshold": 0.5, "min_area": 10, "split_h": 0.0,
                      "fill_holes": True}
    assert 0.0 < dice < 1.0  # only disc A is found


def test_init_starts_from_a_trained_models_weights(two_epoch_run: Path, data: Path,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``init``: the new run takes the trained model's architecture and config (here a
    width-4 U-Net although ``model`` is left at its default) and its weights before the
    first step (checked by capturing the weights the first training step starts from)."""
    seen: list[dict] = []
    original = Trainer.train_epoch

    def spy(self: Trainer, epoch: int) -> float:
        if not seen:
            seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", spy)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "ft"), init=str(two_epoch_run),
                            epochs=1, crop=48, workers=0, batch_size=2, repeats=1,
                            tune_postprocess=False, device="cpu", robust=True))
    start = load_file(str(two_epoch_run / "best.safetensors"))
    assert seen[0].keys() == start.keys()
    assert all(torch.equal(seen[0][k], start[k].to(seen[0][k].dtype)) for k in start)
    cfg = ckpt.load_json(run / "config.json")
    assert cfg["model"] == "unet" and cfg["model_args"]["width"] == 4
    assert cfg["train"]["init"] == str(two_epoch_run) and cfg["train"]["robust"] is True
    assert cfg["train"]["init_weights"].endswith("best.safetensors")
    import hashlib

    assert cfg["train"]["init_weights_sha256"] == hashlib.sha256(
        (two_epoch_run / "best.safetensors").read_bytes()).hexdigest()
    # the fine-tuned weights moved away from the start
    end = load_file(str(run / "last.safetensors"))
    assert any(not torch.equal(end[k].float(), start[k].float()) for k in start)


def test_init_errors(two_epoch_run: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(GlandsegError, match="no trained weights"):
        train(tiny(data, tmp_path / "a", init="unet-lite0"))
    with pytest.raises(GlandsegError, match="not maskrcnn"):
        train(tiny(data, tmp_path / "b", init=str(two_epoch_run), model="maskrcnn"))
    with pytest.raises(GlandsegError, match="^--init: .*nothing.json"):
        train(tiny(data, tmp_path / "c", init=str(tmp_path / "nothing.safetensors")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_robust_flag_reaches_the_augmentation(data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import glandseg.train.loop as loop

    got = []
    real = loop.train_transform
    monkeypatch.setattr(loop, "train_transform", lambda cfg: got.append(cfg) or real(cfg))
    t = Trainer(tiny(data, tmp_path / "r", robust=True, robust_p=0.8, epochs=1))
    t.setup_run()
    try:
        t.setup_data()
    finally:  # train.log's handler, as fit() closes it
        logging.getLogger("glandseg").removeHandler(t._fh)
        logging.getLogger("glandseg").setLevel(t._old_level)
        t._fh.close()
    assert got and got[0].robust is True and got[0].robust_p == 0.8


def test_consistency_trains_and_is_recorded(data: Path, tmp_path: Path) -> None:
    run = train(tiny(data, tmp_path / "cons", epochs=1, consistency=1.0))
    cfg = ckpt.load_json(run / "config.json")
    assert cfg["train"]["consistency"] == 1.0
    assert math.isfinite(float(rows(run)[0]["train_loss"]))


def test_a_second_trainer_on_the_same_run_folder_is_refused(data: Path, tmp_path: Path) -> None:
    from glandseg.train.runstate import LOCK, RunLock

    run = train(tiny(data, tmp_path / "locked", epochs=2, max_minutes=1e-9))  # stops after 1
    assert not (run / LOCK).exists()  # released at the end
    held = RunLock(run).acquire()  # as another process training into it would hold it
    try:
        assert (run / LOCK).read_text() == str(os.getpid())
        with pytest.raises(GlandsegError, match="another glandseg train .* is writing"):
            train(tiny(data, run, epochs=2, max_minutes=60, resume=True))
        assert [int(x["epoch"]) for x in rows(run)] == [1]  # untouched
    finally:
        held.release()
    train(tiny(data, run, epochs=2, max_minutes=60, resume=True))  # free again
    assert [int(x["epoch"]) for x in rows(run)] == [1, 2]


def test_quiet_train_disables_progress_bars(data: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from glandseg.cli import main

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    seen = {}
    import glandseg.train.run as run

    def fake_train(tc: TrainConfig) -> Path:  # what the training would see
        seen["env"] = os.environ.get("TQDM_DISABLE")
        return tmp_path

    monkeypatch.setattr(run, "train", fake_train)
    assert main(["-q", "train", "--model", "unet", "--data", str(data), "--out",
                 str(tmp_path / "q")]) == 0
    assert seen["env"] == "1"
