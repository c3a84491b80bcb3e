"""Named training recipes. A recipe is a list of *stages*, each with its own optimizer,
learning rate, weight decay, batch size and epochs; the run goes through them in order.
"""

from __future__ import annotations

from glandseg import GlandsegError

PRESETS: dict[str, dict[str, list[dict]]] = {
    # The study: U-Net trained with SGD (lr 0.1, wd 1e-5, batch 6), then fine-tuned with
    # Adam (lr 1e-5, wd 1e-3) for 50 epochs. Mask R-CNN: SGD momentum 0.9, lr 5e-3, wd 5e-4,
    # batch 2.
    "study": {
        "unet": [
            {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-5, "batch_size": 6, "epochs": 50},
            {"optimizer": "adam", "lr": 1e-5, "weight_decay": 1e-3, "batch_size": 6, "epochs": 50},
        ],
        "maskrcnn": [
            {"optimizer": "sgd", "lr": 5e-3, "weight_decay": 5e-4, "batch_size": 2, "epochs": 50,
             "momentum": 0.9},
        ],
    },
}


def preset_stages(preset: str, model: str) -> list[dict]:
    """Stages of ``preset`` for ``model`` (U-Net family or Mask R-CNN family)."""
    if preset not in PRESETS:
        raise GlandsegError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    family = "maskrcnn" if model.startswith("maskrcnn") else "unet"
    return [dict(s) for s in PRESETS[preset][family]]
