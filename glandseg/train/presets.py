"""Named training recipes.

A recipe is a list of *stages*, each with its own optimizer, learning rate, weight decay,
batch size and epochs (the run goes through them in order), plus, for the recipes of the
bundled models, the other training settings (architecture, working scale, crop, ...): those
apply wherever the command line leaves the option at its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from glandseg import GlandsegError


@dataclass(frozen=True)
class Preset:
    """``stages``: per model family (``unet`` / ``maskrcnn``); ``settings``: TrainConfig
    fields (``model``, ``scale``, ``crop``, ``tile``, ``repeats``, ...); ``note``: how the
    bundled model was made with it."""

    stages: dict[str, list[dict]]
    settings: dict = field(default_factory=dict)
    note: str = ""


PRESETS: dict[str, Preset] = {
    # The study: U-Net trained with SGD (lr 0.1, wd 1e-5, batch 6), then fine-tuned with
    # Adam (lr 1e-5, wd 1e-3) for 50 epochs. Mask R-CNN: SGD momentum 0.9, lr 5e-3, wd 5e-4,
    # batch 2.
    "study": Preset(stages={
        "unet": [
            {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-5, "batch_size": 6, "epochs": 50},
            {"optimizer": "adam", "lr": 1e-5, "weight_decay": 1e-3, "batch_size": 6, "epochs": 50},
        ],
        "maskrcnn": [
            {"optimizer": "sgd", "lr": 5e-3, "weight_decay": 5e-4, "batch_size": 2, "epochs": 50,
             "momentum": 0.9},
        ],
    }),
    # glas-unet v2: unet-lite0 at full resolution (0.62 µm/px), 512² crops, whole-image
    # inference (tile 1024), 20 passes over the images per epoch, AdamW + cosine, 8 epochs.
    "glas-unet-v2": Preset(
        stages={"unet": [{"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4,
                          "batch_size": 8, "epochs": 8, "schedule": "cosine"}]},
        settings={"model": "unet-lite0", "scale": 1.0, "crop": 512, "tile": 1024,
                  "repeats": 20, "val_fraction": 0.2, "seed": 0},
        note="glas-unet v2 ran this recipe with --epochs 200 --max-minutes 6.5 on a GPU "
             "(cosine following the time budget; 8 epochs done, best by validation: 4); the "
             "preset fixes 8 epochs so that it reproduces on any machine. v3 is v2 fine-tuned "
             "with --init RUN --robust --lr 5e-5 --epochs 14 --repeats 2; the bundled v4 is "
             "v3 fine-tuned with --init RUN --robust --robust-p 0.8 --lr 1e-4 --repeats 10 "
             "(last epoch of 12) and exported with interior_threshold 0.5, boundary_weight 1.",
    ),
    # glas-maskrcnn v2: maskrcnn-lite0 at half resolution, 384² crops, SGD lr 1e-2, batch 4.
    "glas-maskrcnn-v2": Preset(
        stages={"maskrcnn": [{"optimizer": "sgd", "lr": 1e-2, "weight_decay": 5e-4,
                              "batch_size": 4, "epochs": 12, "momentum": 0.9,
                              "schedule": "cosine"}]},
        settings={"model": "maskrcnn-lite0", "crop": 384, "repeats": 10, "val_fraction": 0.2,
                  "seed": 0},
        note="The bundled glas-maskrcnn ran this recipe with --epochs 200 --max-minutes 6.5 "
             "on a GPU (12 epochs done); the preset fixes 12 epochs.",
    ),
    # glas-maskrcnn v3 (not trained yet: needs a GPU): full resolution, 512² crops, a 56²
    # mask head, 3 scales x 5 ratios of anchors fit to the GlaS training glands
    # (results/maskrcnn_v3/gland_sizes.json: 94.5% of glands have an anchor of IoU >= 0.7,
    # v2's anchors 44%), a longer schedule, then 10 babysitting epochs at lr / 20.
    "glas-maskrcnn-v3": Preset(
        stages={"maskrcnn": [
            {"optimizer": "sgd", "lr": 1e-2, "weight_decay": 5e-4, "batch_size": 4,
             "epochs": 40, "momentum": 0.9, "schedule": "cosine"},
            {"optimizer": "sgd", "lr": 5e-4, "weight_decay": 5e-4, "batch_size": 4,
             "epochs": 10, "momentum": 0.9, "schedule": "constant"}]},
        settings={"model": "maskrcnn-lite0", "scale": 1.0, "crop": 512, "tile": 800,
                  "repeats": 10, "val_fraction": 0.2, "seed": 0,
                  "model_args": {"mask_resolution": 56,
                                 "anchor_sizes": [32, 64, 128, 256, 512],
                                 "anchor_scales": [1.0, 1.2599, 1.5874],
                                 "aspect_ratios": [0.4, 0.63, 1.0, 1.6, 2.5],
                                 "box_batch_size_per_image": 256}},
        note="Not run yet (no GPU in the session that wrote it); the GPU study "
             "(results/search/gpu_search.sh) searches its optimiser settings and RoI sampling.",
    ),
}


def _family(model: str) -> str:
    return "maskrcnn" if model.startswith("maskrcnn") else "unet"


def preset_stages(preset: str, model: str) -> list[dict]:
    """Stages of ``preset`` for ``model`` (U-Net family or Mask R-CNN family)."""
    p = get_preset(preset)
    family = _family(model)
    if family not in p.stages:
        raise GlandsegError(f"preset {preset!r} has no recipe for {model!r} (a "
                            f"{'/'.join(p.stages)} recipe); drop --model or choose another preset")
    return [dict(s) for s in p.stages[family]]


def preset_settings(preset: str) -> dict:
    """Training settings of ``preset`` besides its stages (may be empty)."""
    return dict(get_preset(preset).settings)


def get_preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise GlandsegError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]
