"""The study's tuning protocol (``glandseg search --protocol``): broad + narrowed random
search, long training of the winner and babysitting, on a tiny synthetic GlaS folder;
two worker processes on one study (stage barrier); the CLI."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest
import torch

from glandseg import GlandsegError
from glandseg.search.protocol import (
    PROTOCOLS,
    ProtocolConfig,
    final_stages,
    protocol_config,
    run_protocol,
)
from glandseg.search.space import load_space
from glandseg.search.study import SearchConfig, check_inputs, open_study, run_search
from tests.conftest import make_glas_folder

optuna = pytest.importorskip("optuna", reason="glandseg search needs optuna (dev extra)")
from optuna.trial import TrialState  # noqa: E402

TINY_SPACE = {"batch_size": {"choices": [2, 4]}, "crop": {"choices": [32]}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 training images of 3 patients (one held out for validation), 32 x 32 px."""
    return make_glas_folder(tmp_path_factory.mktemp("glas"),
                            names=[f"train_{i}" for i in range(1, 7)], ext=".png", size=(32, 32),
                            n_glands=2)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("glandseg.report.figures.training_curves", lambda *a, **k: None)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(data: Path, out: Path, extra_space: dict | None = None, **kw) -> SearchConfig:
    space = out.parent / f"{out.name}-space.json"
    space.write_text(json.dumps({**TINY_SPACE, **(extra_space or {})}))
    args = dict(model="unet", data=str(data), out=str(out), sampler="random", pruner="none",
                stages=2, trials=4, stage1_trials=2, epochs=1, scale=1.0, repeats=1,
                loader_workers=0, device="cpu", pretrained=False, model_args={"width": 4},
                space=str(space))
    args.update(kw)
    return SearchConfig(**args)


def trials_of(cfg: SearchConfig):
    return open_study(cfg, load_space(cfg.model, cfg.space, cfg.pretrained)).get_trials()


def test_final_stages_long_then_babysit() -> None:
    train = {"optimizer": "sgd", "lr": 0.02, "weight_decay": 1e-4, "batch_size": 4,
             "momentum": 0.8, "epochs": 20}
    long, baby = final_stages(train, 100, 30, 0.05)
    assert long == {"optimizer": "sgd", "lr": 0.02, "weight_decay": 1e-4, "batch_size": 4,
                    "momentum": 0.8, "epochs": 100, "schedule": "cosine"}
    assert baby == {**long, "lr": pytest.approx(0.001), "epochs": 30, "schedule": "constant"}
    assert final_stages(train, 10, 0, 0.05) == [{**long, "epochs": 10}]


def test_protocol_fills_only_options_left_at_defaults() -> None:
    pc = protocol_config("study", SearchConfig(model="unet", data="x"))
    s = pc.search
    assert (s.sampler, s.pruner, s.stages, s.trials, s.stage1_trials, s.epochs) == (
        "random", "none", 2, 100, 50, 20)
    assert (pc.long_epochs, pc.babysit_epochs, pc.babysit_lr_factor) == (100, 30, 0.05)
    pc = protocol_config("study", SearchConfig(model="unet", data="x", trials=8, epochs=3),
                         long_epochs=5, babysit_epochs=None)
    assert (pc.search.trials, pc.search.stage1_count(), pc.search.epochs) == (8, 4, 3)
    assert (pc.long_epochs, pc.babysit_epochs) == (5, PROTOCOLS["study"]["babysit_epochs"])
    t = protocol_config("tpe-hyperband", SearchConfig(model="unet", data="x")).search
    assert (t.sampler, t.pruner, t.stages, t.trials) == ("tpe", "hyperband", 1, 100)
    with pytest.raises(GlandsegError, match="unknown protocol 'grid'"):
        protocol_config("grid", SearchConfig())


@pytest.mark.parametrize("kw,words", [
    ({"stage1_trials": 4}, "--stage1-trials 4 needs --stages 2 and must be between 1 and"),
    ({"stage1_trials": 2, "stages": 1}, "--stage1-trials 2 needs --stages 2"),
    ({"narrow_factor": 0.0}, "--narrow-factor 0.0 must be in"),
])
def test_bad_stage_options_are_one_line(tmp_path: Path, data: Path, kw: dict,
                                        words: str) -> None:
    with pytest.raises(GlandsegError, match=words) as err:
        check_inputs(tiny(data, tmp_path / "study", **kw))
    assert "\n" not in str(err.value)


def test_whole_protocol_on_a_tiny_set(tmp_path: Path, data: Path, fast) -> None:
    """2 broad + 2 narrowed trials of 1 epoch, then 2 long epochs and 1 babysitting epoch
    at lr x 0.1; the same call again trains nothing more."""
    cfg = tiny(data, tmp_path / "study", narrow_factor=0.5,
               extra_space={"optimizer": {"choices": ["adamw", "adam"]}})
    pc = ProtocolConfig(cfg, long_epochs=2, babysit_epochs=1, babysit_lr_factor=0.1,
                        name="test")
    doc = run_protocol(pc)
    trials = trials_of(cfg)
    assert [t.user_attrs["stage"] for t in trials] == [1, 1, 2, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    best1 = max(trials[:2], key=lambda t: t.value)
    for t in trials[2:]:  # narrowed around stage 1's best: half the decades of lr
        lr = t.distributions["lr"]
        assert lr.low <= best1.params["lr"] <= lr.high
        assert lr.high / lr.low <= (3e-3 / 1e-4) ** 0.5 * 1.0001
    for t in trials[2:]:  # narrowed choices: stage 1's best only, under another Optuna name
        assert t.params["optimizer.stage2"] == best1.params["optimizer"]
        assert t.user_attrs["train"]["optimizer"] == best1.params["optimizer"]
    s = doc["search"]
    assert s["stage1"]["trials"] == s["stage2"]["trials"] == 2
    assert s["stage1"]["best_value"] == best1.value
    best = max(trials, key=lambda t: t.value)
    assert doc["best_trial"]["trial"] == best.number
    run = tmp_path / "study" / "final"
    config = json.loads((run / "config.json").read_text())
    stages = config["train"]["stages"]
    assert [st["epochs"] for st in stages] == [2, 1]
    assert stages[0]["lr"] == pytest.approx(best.params["lr"])
    assert stages[1]["lr"] == pytest.approx(best.params["lr"] * 0.1)
    assert [st["schedule"] for st in stages] == ["cosine", "constant"]
    assert stages[0]["batch_size"] == best.params["batch_size"]
    assert stages[0]["optimizer"] == best.user_attrs["train"]["optimizer"]
    assert config["train"]["val_fraction"] == cfg.val_fraction  # the same held-out patients
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["stage"]) for r in rows] == [1, 1, 2]
    assert set(doc["final"]["phases"]) == {"long", "babysit"}
    assert doc["final"]["phases"]["babysit"]["epochs"] == 1
    assert (run / "best.safetensors").is_file()
    assert json.loads((tmp_path / "study" / "protocol.json").read_text())["model"] == "unet"
    before = (run / "metrics.csv").stat().st_mtime_ns
    again = run_protocol(pc)
    assert (run / "metrics.csv").stat().st_mtime_ns == before and len(trials_of(cfg)) == 4
    assert again["final"]["phases"] == doc["final"]["phases"]


def test_cli_protocol(tmp_path: Path, data: Path, fast, capsys) -> None:
    from glandseg.cli import main

    cfg = tiny(data, tmp_path / "study")
    rc = main(["search", "--protocol", "study", "--model", "unet", "--data", str(data),
               "--out", cfg.out, "--trials", "2", "--epochs", "1", "--scale", "1",
               "--repeats", "1", "--loader-workers", "0", "--device", "cpu",
               "--pretrained", "none", "--model-args", '{"width": 4}', "--space", cfg.space,
               "--long-epochs", "1", "--babysit-epochs", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 complete, 0 pruned, 0 failed of 2" in out
    assert "stage1: best validation object Dice" in out and "stage2:" in out
    assert "final babysit (1 epochs, lr" in out
    doc = json.loads((tmp_path / "study" / "protocol.json").read_text())
    assert doc["protocol"] == "study" and doc["search"]["sampler"] == "random"
    assert doc["search"]["stage1_trials"] == 1


@pytest.mark.slow
def test_two_workers_wait_for_stage_one(tmp_path: Path, data: Path) -> None:
    """2 worker processes on one SQLite study in the study folder: both train, and no
    stage-2 trial samples its narrowed space before every stage-1 trial has finished."""
    cfg = tiny(data, tmp_path / "study", trials=6, stage1_trials=3, epochs=2, workers=2)
    c = run_search(cfg)
    assert c.finished == 6
    trials = [t for t in trials_of(cfg) if t.state == TrialState.COMPLETE]
    assert (tmp_path / "study" / "study.db").is_file()
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    ones = [t for t in trials if t.user_attrs["stage"] == 1]
    twos = [t for t in trials if t.user_attrs["stage"] == 2]
    assert len(ones) >= 3 and len(ones) + len(twos) == 6 and twos
    end1: datetime = max(t.datetime_complete for t in ones)
    # a stage-2 trial may be created while the last stage-1 trial runs (two workers race),
    # but its space is narrowed only once stage 1 has finished (optuna's datetimes: local)
    assert all(t.user_attrs["sampled_at"] >= end1.timestamp() - 1e-3 for t in twos)


def test_narrowed_choices_get_their_own_optuna_name() -> None:
    """Optuna refuses other choices under a name already sampled (stage 1's full list):
    stage 2's narrowed choices are sampled as NAME.stage2; unchanged ones keep NAME."""
    space = load_space("unet", None, False)
    narrow = space.narrowed({"crop": 256, "batch_size": 8, "lr": 1e-3})
    by = {p.name: p for p in narrow.params}
    assert by["crop"].choices == (192, 256) and by["crop"].key == "crop.stage2"
    assert by["batch_size"].choices == (4, 8, 16) and by["batch_size"].key is None
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"crop": 128})
    t = study.ask()
    space.suggest(t)
    study.tell(t, 0.5)
    t = study.ask()
    values = narrow.suggest(t)
    assert values["crop"] in (192, 256) and t.params["crop.stage2"] == values["crop"]
    assert narrow.train_params(values)["crop"] == values["crop"]
