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
