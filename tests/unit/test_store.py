"""Loading models (glandseg.models.store): names, run folders, weights files, the bundled
models, and one-line errors for every damaged file, also through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from glandseg import GlandsegError
from glandseg.cli import main
from glandseg.data.io import write_image
from glandseg.models import registry, store


def tiny_cfg(width: int = 4) -> dict:
    cfg = registry.default_config("unet")
    cfg["model_args"]["width"] = width
    cfg["preprocess"]["scale"] = 1.0
    return cfg


def save_model(path: Path, cfg: dict, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = registry.build_model(cfg, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder: a width-4 U-Net (random weights) and its config with metadata."""
    r = tmp_path / "run"
    r.mkdir()
    cfg = {**tiny_cfg(), "train": {"epochs": 1, "crop": 48}, "validation": {"best": None}}
    (r / "config.json").write_text(json.dumps(cfg))
    save_model(r / "best.safetensors", tiny_cfg())
    return r


def test_run_folder_loads_with_defaults_filled_and_metadata_kept(run: Path) -> None:
    raw = json.loads((run / "config.json").read_text())
    del raw["tiling"], raw["postprocess"]  # an older run: defaults fill them
    (run / "config.json").write_text(json.dumps(raw))
    model, cfg = store.load_model(str(run))
    assert not model.training
    assert cfg["tiling"] == {"tile": 512, "overlap": 96, "batch_size": 2}
    assert cfg["postprocess"]["split_h"] == 0.0
    assert cfg["train"] == {"epochs": 1, "crop": 48}
    mc, w = store.resolve_config(str(run))
    assert w == run / "best.safetensors" and mc.source == str(run / "config.json")


def test_weights_file_with_its_json(tmp_path: Path) -> None:
    w = tmp_path / "m.safetensors"
    save_model(w, tiny_cfg())
    (tmp_path / "m.json").write_text(json.dumps(tiny_cfg()))
    model, cfg = store.load_model(str(w))
    assert cfg["model_args"]["width"] == 4
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    w = tmp_path / "m.safetensors"
    save_model(w, tiny_cfg(8))
    (tmp_path / "m.json").write_text(json.dumps(tiny_cfg(4)))
    with pytest.raises(GlandsegError) as e:
        store.load_model(str(w))
    assert str(w) in str(e.value) and "shape of" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", b"junk"])
def test_damaged_weights_file(tmp_path: Path, content: bytes) -> None:
    w = tmp_path / "m.safetensors"
    save_model(w, tiny_cfg())
    w.write_bytes(w.read_bytes()[:100] if not content else content)
    (tmp_path / "m.json").write_text(json.dumps(tiny_cfg()))
    with pytest.raises(GlandsegError, match="not a valid safetensors file") as e:
        store.load_model(str(w))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,words", [
    ("[1, 2]", "JSON object"),
    ("{\"model\": ", "invalid JSON"),
    ("{}", "no 'model' key"),
])
def test_damaged_config_beside_weights(tmp_path: Path, text: str, words: str) -> None:
    w = tmp_path / "m.safetensors"
    w.write_bytes(b"")  # never read: the config is refused first
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(GlandsegError, match=words) as e:
        store.resolve_model(str(w))
    assert str(tmp_path / "m.json") in str(e.value)


def test_names_and_unknown_specs() -> None:
    cfg, w = store.resolve_model("unet")
    assert w is None and cfg == registry.default_config("unet")
    with pytest.raises(GlandsegError, match="unknown model 'no-such-model'"):
        store.resolve_model("no-such-model")


@pytest.mark.parametrize("name", registry.BUNDLED)
def test_bundled_models_load(name: str) -> None:
    """The bundled weights fit the network their own config describes."""
    model, mc = store.load(name)
    assert mc.source.endswith(f"{name}.json") and mc.metadata["model_card"]
    n = sum(p.numel() for p in model.parameters())
    assert 3e6 < n < 9e6  # 3.8 M (unet-lite0) and 8.0 M (maskrcnn-lite0)


def test_checkpoint_module_reexports_the_store() -> None:
    from glandseg.train import checkpoint

    assert checkpoint.load_model is store.load_model
    assert checkpoint.resolve_model is store.resolve_model


# --- through the command line: one line on stderr, exit 1, nothing written ---------------

@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "img.png"
    write_image(p, np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    return p


def _bundled_copy(tmp_path: Path, **changes: object) -> Path:
    """glas-unet's config with top-level or ``section__key`` changes, beside a weights file
    that must never be read."""
    cfg = json.loads((registry.bundled_path("glas-unet").with_suffix(".json")).read_text())
    for key, value in changes.items():
        if "__" in key:
            sec, k = key.split("__")
            cfg[sec][k] = value
        else:
            cfg[key] = value
    d = tmp_path / "model"
    d.mkdir()
    (d / "m.json").write_text(json.dumps(cfg))
    (d / "m.safetensors").write_bytes(b"")
    return d / "m.safetensors"


@pytest.mark.parametrize("changes,key", [
    ({"task": "binary"}, "task"),
    ({"preprocess__scale": 0}, "preprocess.scale"),
    ({"preprocess__mean": [0.5]}, "preprocess.mean"),
    ({"tiling": {"tile": -5}}, "tiling.tile"),
    ({"postprocess__min_areaa": 300}, "postprocess.min_areaa"),
])
def test_cli_refuses_a_damaged_config(tmp_path: Path, image: Path, capsys, changes: dict,
                                      key: str) -> None:
    weights = _bundled_copy(tmp_path, **changes)
    out = tmp_path / "out"
    rc = main(["predict", str(image), "--out", str(out), "--model", str(weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(weights.with_suffix(".json")) in err and key in err
    assert not out.exists() or not any(out.iterdir())
