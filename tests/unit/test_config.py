"""The typed model config: every hand-edited or damaged config is a one-line error naming
the file and the key, never a traceback or a silently wrong result (torch-free, fast)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from glandseg import GlandsegError
from glandseg.models import registry
from glandseg.models.config import (
    POSTPROCESS,
    BinaryPost,
    ContourPost,
    InstancePost,
    ModelConfig,
    Tiling,
    postprocess_params,
)
from glandseg.models.store import load_config

WEIGHTS = Path(registry.__file__).parent.parent / "weights"


def bundled(name: str) -> dict:
    return json.loads((WEIGHTS / f"{name}.json").read_text())


def write(tmp_path: Path, obj: object, name: str = "config.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def refused(tmp_path: Path, obj: object, *words: str) -> str:
    """Load ``obj`` as a config file; assert a one-line GlandsegError naming the file and
    each of ``words``; return the message."""
    p = write(tmp_path, obj)
    with pytest.raises(GlandsegError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def lite(**changes: object) -> dict:
    """glas-unet's config with ``changes`` (dotted keys) applied."""
    cfg = bundled("glas-unet")
    for key, value in changes.items():
        *path, last = key.split("__")
        d = cfg
        for k in path:
            d = d[k]
        d[last] = value
    return cfg


# --- the cases -------------------------------------------------------------------

def test_missing_model_key(tmp_path: Path) -> None:
    cfg = bundled("glas-unet")
    del cfg["model"]
    refused(tmp_path, cfg, "'model'", "unet-lite0")


def test_json_list_instead_of_object(tmp_path: Path) -> None:
    refused(tmp_path, [bundled("glas-unet")], "JSON object", "list")


def test_one_element_mean(tmp_path: Path) -> None:
    refused(tmp_path, lite(preprocess__mean=[0.5]), "preprocess.mean", "3 numbers")


@pytest.mark.parametrize("tile", [-5, 0, 1, 63, 8193, 100.5, "512", True])
def test_bad_tile(tmp_path: Path, tile: object) -> None:
    cfg = lite()
    cfg["tiling"] = {"tile": tile}
    refused(tmp_path, cfg, "tiling.tile", "[64, 8192]")


def test_overlap_over_half_the_tile(tmp_path: Path) -> None:
    cfg = lite()
    cfg["tiling"] = {"tile": 128, "overlap": 65}
    refused(tmp_path, cfg, "tiling.overlap", "[0, 64]")


def test_binary_task_on_contour_architecture(tmp_path: Path) -> None:
    refused(tmp_path, lite(task="binary"), "task 'binary'", "unet-lite0", "'contour'")


def test_unknown_task(tmp_path: Path) -> None:
    refused(tmp_path, lite(task="semantic"), "task must be one of")


@pytest.mark.parametrize("scale", [0, -0.5, 0.01, 10, None, "0.5"])
def test_bad_scale(tmp_path: Path, scale: object) -> None:
    refused(tmp_path, lite(preprocess__scale=scale), "preprocess.scale")


@pytest.mark.parametrize("std", [[0.5, 0, 0.5], [0.5, -1, 0.5], [0.5, float("nan"), 0.5]])
def test_std_must_be_positive(tmp_path: Path, std: list) -> None:
    refused(tmp_path, lite(preprocess__std=std), "preprocess.std[1]")


def test_unet_width_refused_before_any_allocation(tmp_path: Path, monkeypatch) -> None:
    """``width: 4096`` would allocate gigabytes: the config check stops it first."""
    built = []
    monkeypatch.setitem(registry.BUILDERS, "unet", lambda *a, **k: built.append(1))
    cfg = registry.default_config("unet")
    cfg["model_args"]["width"] = 4096
    refused(tmp_path, cfg, "model_args.width", "[4, 256]")
    with pytest.raises(GlandsegError, match="model_args.width"):
        registry.build_model(cfg, pretrained=False)
    assert not built


def test_out_channels_must_fit_the_task(tmp_path: Path) -> None:
    cfg = registry.default_config("unet")  # binary
    cfg["model_args"]["out_channels"] = 3
    refused(tmp_path, cfg, "model_args.out_channels", "binary needs 1")
    cfg["task"] = "contour"  # a 3-channel U-Net with the contour target is fine
    cfg["postprocess"] = {}
    assert load_config(write(tmp_path, cfg)).task == "contour"


@pytest.mark.parametrize("section,key", [
    ("", "modle"),
    ("preprocess", "scael"),
    ("tiling", "tile_size"),
    ("postprocess", "min_size"),
    ("model_args", "widht"),
])
def test_unknown_key_at_every_level(tmp_path: Path, section: str, key: str) -> None:
    cfg = registry.default_config("unet")
    (cfg[section] if section else cfg)[key] = 1
    name = f"{section}.{key}" if section else key
    refused(tmp_path, cfg, f"unknown key {name!r}")


def test_postprocess_key_of_another_task(tmp_path: Path) -> None:
    """A contour parameter in a binary config was silently ignored before."""
    cfg = registry.default_config("unet")
    cfg["postprocess"]["interior_threshold"] = 0.6
    refused(tmp_path, cfg, "postprocess.interior_threshold", "split_h")


@pytest.mark.parametrize("section", ["model_args", "preprocess", "tiling", "postprocess"])
def test_section_must_be_an_object(tmp_path: Path, section: str) -> None:
    cfg = registry.default_config("unet-lite0")
    cfg[section] = [1, 2]
    refused(tmp_path, cfg, section, "JSON object")


@pytest.mark.parametrize("key,value,words", [
    ("interior_threshold", 1.5, "[0, 1]"),
    ("min_area", -1, "integer"),
    ("min_area", 10.5, "integer"),
    ("fill_holes", "yes", "true or false"),
])
def test_postprocess_ranges(tmp_path: Path, key: str, value: object, words: str) -> None:
    cfg = lite()
    cfg["postprocess"][key] = value
    refused(tmp_path, cfg, f"postprocess.{key}", words)


@pytest.mark.parametrize("change,key", [
    ({"backbone": "vgg16"}, "model_args.backbone"),
    ({"fpn_channels": 100}, "multiple of 32"),
    ({"anchor_sizes": [24, 48]}, "model_args.anchor_sizes"),
    ({"encoder": "lite2"}, "model_args.encoder"),
    ({"box_detections_per_img": 0}, "model_args.box_detections_per_img"),
    ({"pretrained_source": "coco"}, "unknown key 'model_args.pretrained_source'"),
])
def test_maskrcnn_args(tmp_path: Path, change: dict, key: str) -> None:
    cfg = bundled("glas-maskrcnn")
    cfg["model_args"].update(change)
    refused(tmp_path, cfg, key)


def test_resnet_maskrcnn_args_are_checked_for_their_backbone(tmp_path: Path) -> None:
    cfg = registry.default_config("maskrcnn")
    cfg["model_args"]["fpn_channels"] = 128  # a lite0 argument: not read by ResNet-50
    refused(tmp_path, cfg, "model_args.fpn_channels")
    cfg = {"model": "maskrcnn", "model_args": {"backbone": "lite0"}}
    mc = load_config(write(tmp_path, cfg))  # the name's resnet-only defaults are dropped
    assert "pretrained_source" not in mc.model_args and mc.model_args["encoder"] == "lite0"


def test_detector_ranges_name_the_detector_kwargs() -> None:
    maskrcnn = pytest.importorskip("glandseg.models.maskrcnn")
    assert set(registry.DETECTOR_RANGES) == set(maskrcnn.DETECTOR_KWARGS)


# --- what stays allowed ----------------------------------------------------------------

@pytest.mark.parametrize("name", registry.BUNDLED)
def test_bundled_configs_load_and_round_trip(name: str) -> None:
    raw = bundled(name)
    mc = load_config(WEIGHTS / f"{name}.json")
    assert mc.model == raw["model"] and mc.task == raw["task"]
    d = mc.to_dict()
    # a config without the resolution (written before it existed) gets GlaS's
    raw["preprocess"].setdefault("mpp", 0.62005)
    for k in ("model_card", "validation", "train", "preprocess", "postprocess"):
        assert json.dumps(d[k], sort_keys=True) == json.dumps(raw[k], sort_keys=True), k
    assert {k: d["model_args"][k] for k in raw["model_args"]} == raw["model_args"]
    assert ModelConfig.from_dict(d) == mc  # a written config reads back the same


@pytest.mark.parametrize("name", registry.architectures())
def test_defaults_in_one_place(name: str) -> None:
    """A config naming only the architecture gets exactly the registry's defaults."""
    mc = ModelConfig.from_dict({"model": name})
    assert mc.to_dict() == registry.default_config(name)
    assert mc.postprocess == POSTPROCESS[mc.task]()
    assert ModelConfig.from_dict(registry.default_config(name)) == mc


def test_run_config_metadata_is_kept(tmp_path: Path) -> None:
    cfg = registry.default_config("unet")
    cfg["train"] = {"epochs": 2, "anything": [1, {"nested": None}]}
    cfg["validation"] = {"best": {"val_loss": float("nan")}}
    mc = load_config(write(tmp_path, cfg))
    assert mc.metadata["train"] == cfg["train"]
    assert mc.to_dict()["train"] == cfg["train"]


def test_integer_written_as_float_is_accepted(tmp_path: Path) -> None:
    cfg = lite()
    cfg["postprocess"]["min_area"] = 300.0
    cfg["tiling"] = {"tile": 640.0}
    mc = load_config(write(tmp_path, cfg))
    assert mc.postprocess.min_area == 300 and isinstance(mc.postprocess.min_area, int)
    assert mc.tiling == Tiling(640, 96, 2)


def test_predictor_configs_without_a_registered_model() -> None:
    """A network built elsewhere (a stub): no ``model`` needed, but task and preprocess are."""
    pre = {"scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]}
    mc = ModelConfig.from_dict({"task": "binary", "preprocess": pre}, require_model=False)
    assert mc.model is None and mc.postprocess == BinaryPost()
    with pytest.raises(GlandsegError, match="'preprocess'"):
        ModelConfig.from_dict({"task": "binary"}, require_model=False)
    with pytest.raises(GlandsegError, match="postprocess.min_seed_area"):
        ModelConfig.from_dict({"task": "binary", "preprocess": pre,
                               "postprocess": {"min_seed_area": 3}}, require_model=False)


# --- tiling and post-processing objects --------------------------------------------------

def test_tiling_checked_on_construction_and_option() -> None:
    with pytest.raises(GlandsegError, match=r"tile must be an integer in \[64, 8192\], got -5"):
        Tiling(tile=-5)
    with pytest.raises(GlandsegError, match="^--tile: "):
        Tiling().with_tile(1)
    t = Tiling(512, 96, 2).with_tile(128)
    assert t == Tiling(128, 32, 2)


def test_post_params_update_and_unknown_keys() -> None:
    post = ContourPost()
    assert post.updated({"min_area": 600}).min_area == 600
    assert post.min_area == 100  # frozen: the original is unchanged
    with pytest.raises(GlandsegError, match="unknown key 'postprocess.score_threshold'"):
        post.updated({"score_threshold": 0.5})
    with pytest.raises(GlandsegError, match="is not for task"):
        postprocess_params("binary", InstancePost())
    assert postprocess_params("instances", {"min_area": 5}) == InstancePost(min_area=5)


def test_default_config_is_a_fresh_copy() -> None:
    a = registry.default_config("unet-lite0")
    b = copy.deepcopy(a)
    a["model_args"]["decoder_channels"].append(8)
    assert registry.default_config("unet-lite0") == b
