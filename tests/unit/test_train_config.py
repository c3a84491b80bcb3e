"""The typed training config: one table of defaults and ranges, frozen, one-line errors;
options given on the command line win over presets and params files even when they equal
the default; ``--resume`` refuses an option that differs from the run's, naming it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from glandseg import GlandsegError
from glandseg.cli import train_cmd
from glandseg.train.config import (
    DEFAULTS,
    TrainConfig,
    build_train_config,
    resume_conflicts,
)
from glandseg.train.params import NUMBERS, load_params
from tests.conftest import make_glas_folder


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    return parser.parse_args(["train", "--out", "x", *argv])


def cli_config(*argv: str, params: dict | None = None) -> TrainConfig:
    return build_train_config(train_cmd.given_options(parse(*argv)), params)


def test_preset_stage_option_given_on_the_command_line_wins() -> None:
    """The defect: `train --preset glas-unet-v2 --epochs 1` trained the preset's 8 epochs."""
    assert cli_config("--preset", "glas-unet-v2").resolved_stages()[0]["epochs"] == 8
    tc = cli_config("--preset", "glas-unet-v2", "--epochs", "1")
    assert [s["epochs"] for s in tc.resolved_stages()] == [1]
    tc = cli_config("--preset", "study", "--model", "unet", "--lr", "0.05")
    assert [s["lr"] for s in tc.resolved_stages()] == [0.05, 0.05]  # every stage
    assert [s["optimizer"] for s in tc.resolved_stages()] == ["sgd", "adam"]  # the rest kept


def test_an_option_equal_to_its_default_still_wins_over_the_preset() -> None:
    """The defect: an option given with its default value (--crop 256) was replaced."""
    assert cli_config("--preset", "glas-maskrcnn-v2").crop == 384
    assert cli_config("--preset", "glas-maskrcnn-v2", "--crop", "256").crop == 256
    assert cli_config("--preset", "glas-unet-v2", "--repeats", "2").repeats == 2


def test_an_option_equal_to_its_default_still_wins_over_params(tmp_path: Path) -> None:
    f = tmp_path / "best.json"
    f.write_text(json.dumps({"train": {"lr": 0.02, "crop": 128, "epochs": 7,
                                       "model_args": {"width": 8}}}))
    params = load_params(f)
    tc = cli_config("--model", "unet", "--lr", "0.001", "--model-args", '{"batch_norm": true}',
                    params=params)
    assert (tc.lr, tc.crop, tc.epochs) == (0.001, 128, 7)
    assert tc.model_args == {"width": 8, "batch_norm": True}
    assert tc.resolved_stages()[0]["lr"] == 0.001
    # params over the preset, the command line over both
    tc = cli_config("--preset", "glas-unet-v2", "--crop", "256", params=params)
    assert tc.crop == 256 and tc.resolved_stages()[0]["epochs"] == 7


def test_given_names_what_was_set() -> None:
    tc = cli_config("--epochs", "100", "--robust")
    assert {"epochs", "robust", "out"} <= set(tc.given)
    assert "lr" not in tc.given and tc.lr == DEFAULTS["lr"]


def test_frozen_and_checked_with_one_line_errors() -> None:
    tc = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        tc.epochs = 3  # type: ignore[misc]
    for kw, key in [({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"optimizer": "x"},
                    "optimizer"), ({"model": "glas-unet"}, "model"), ({"crop": 16}, "crop"),
                    ({"loss_weights": {"mask": 1.0}}, "loss_weights.mask"),
                    ({"stages": [{"lr": 0.1}]}, "stages[0]"), ({"preset": "nope"}, "preset"),
                    ({"robust": "yes"}, "robust"), ({"bogus": 1}, "bogus")]:
        try:
            TrainConfig(**kw)
        except TypeError:
            assert "bogus" in kw  # not a field at all
            continue
        except GlandsegError as exc:
            assert key in str(exc) and "\n" not in str(exc)
            continue
        raise AssertionError(f"{kw} accepted")


def test_one_tile_range_everywhere() -> None:
    """The tile range was checked in three places with three limits (4096, 8192, >= 64)."""
    lo, hi = NUMBERS["tile"][1:3]
    assert (lo, hi) == (64, 8192)
    assert TrainConfig(tile=hi).tile == hi
    with pytest.raises(GlandsegError, match="tile"):
        TrainConfig(tile=hi + 1)
    with pytest.raises(GlandsegError, match="tile"):
        TrainConfig(tile=lo - 1)
    assert cli_config("--tile", "6000").tile == 6000
    with pytest.raises(SystemExit):
        parse("--tile", str(hi + 1))


def test_help_shows_the_table_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 100)" in text and "(default: 0.001)" in text
    assert "(default: unet-lite0)" in text


def test_resume_conflicts_name_the_options() -> None:
    run = {**TrainConfig(model="unet", epochs=4, lr=0.01).as_dict()}
    same = TrainConfig(model="unet", epochs=4, out="r", resume=True, device="cpu",
                       max_minutes=3.0, given=("model", "epochs", "out", "resume", "device",
                                               "max_minutes"))
    assert resume_conflicts(same, run) == []
    other = TrainConfig(model="unet", epochs=5, lr=0.001, given=("epochs", "lr", "resume"))
    got = resume_conflicts(other, run)
    assert [g.split()[0] for g in got] == ["--epochs", "--lr"]
    assert "the run's: 4" in got[0]
    args = TrainConfig(model_args={"width": 8}, given=("model_args",))
    assert resume_conflicts(args, {"model_args": {"width": 4}})[0].startswith("--model-args")


def test_resume_refuses_another_option_and_takes_the_allowed_ones(tmp_path: Path) -> None:
    from glandseg.cli import main

    data = make_glas_folder(tmp_path / "glas", names=[f"train_{i}" for i in range(1, 5)],
                            size=(64, 64), ext=".png", n_glands=2)
    run = tmp_path / "run"
    base = ["-q", "train", "--model", "unet", "--model-args", '{"width": 4}', "--crop", "48",
            "--scale", "1.0", "--workers", "0", "--batch-size", "2", "--repeats", "1",
            "--no-tune", "--device", "cpu", "--out", str(run)]
    assert main([*base, "--data", str(data), "--epochs", "1"]) == 0
    with pytest.raises(GlandsegError, match=r"--epochs 3 \(the run's: 1\)"):
        from glandseg.cli import train_cmd as tc_mod

        tc_mod.run(parse("--out", str(run), "--resume", "--epochs", "3", "--lr", "0.001"))
    rc = main(["-q", "train", "--out", str(run), "--resume", "--epochs", "3"])
    assert rc != 0  # the CLI: one line, exit code != 0
    # the run's own options (all of them repeated) and the allowed changes pass
    assert main([*base, "--epochs", "1", "--resume", "--max-minutes", "5"]) == 0
