"""Training presets: stages per model family, settings that are real TrainConfig fields."""

from __future__ import annotations

import dataclasses

import pytest

from glandseg import GlandsegError
from glandseg.train.loop import TrainConfig
from glandseg.train.presets import PRESETS, preset_settings, preset_stages


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_settings_are_train_config_fields(name: str) -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(preset_settings(name)) - fields
    assert not unknown, f"preset {name} sets unknown TrainConfig fields {unknown}"


def test_study_preset_has_both_families() -> None:
    assert [s["optimizer"] for s in preset_stages("study", "unet")] == ["sgd", "adam"]
    assert preset_stages("study", "maskrcnn-lite0")[0]["momentum"] == 0.9


def test_bundled_recipes() -> None:
    s = preset_settings("glas-unet-v2")
    assert (s["model"], s["scale"], s["crop"], s["tile"]) == ("unet-lite0", 1.0, 512, 1024)
    assert preset_stages("glas-unet-v2", "unet-lite0")[0]["epochs"] == 8
    tc = TrainConfig(preset="glas-maskrcnn-v2", model="maskrcnn-lite0")
    assert tc.resolved_stages()[0]["lr"] == 1e-2


def test_preset_errors_are_one_line() -> None:
    with pytest.raises(GlandsegError, match="unknown preset"):
        preset_stages("nope", "unet")
    with pytest.raises(GlandsegError, match="no recipe for"):
        preset_stages("glas-unet-v2", "maskrcnn-lite0")


def test_cli_preset_fills_options_not_given() -> None:
    """`glandseg train --preset glas-maskrcnn-v2` trains maskrcnn-lite0 with the preset's
    crop, while an option given explicitly wins."""
    import argparse

    from glandseg.cli import train_cmd
    from glandseg.train.config import build_train_config

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--preset", "glas-maskrcnn-v2", "--out", "x",
                              "--repeats", "3"])
    tc = build_train_config(train_cmd.given_options(args))
    assert (tc.model, tc.crop, tc.repeats) == ("maskrcnn-lite0", 384, 3)
