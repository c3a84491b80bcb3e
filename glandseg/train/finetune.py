"""Fine-tuning on a handful of corrected images (``glandseg train --init MODEL``).

A pathologist corrects a few of glandseg's predictions in QuPath and exports them as
GeoJSON beside the images (:mod:`glandseg.data.geojson`); ``glandseg train --init
glas-unet --data CORRECTED/`` then adapts the model. With 3-20 images the defaults made for
training from scratch on GlaS (100 epochs of 2 passes at lr 1e-3, a 20 % validation split,
post-processing tuned on it) overfit and pick thresholds from one or two images.
:func:`apply_small_set` replaces the options left at those defaults (see
:data:`SMALL_SET` and the README's "Correct and retrain", where they were measured):

- lr :data:`SMALL_SET` ``lr`` (the bundled model's own fine-tunes used it too);
- epochs and repeats so that a run is about ``steps`` optimizer steps of the batch size,
  whatever the number of images;
- validation on held-out images (about a third, whole patients; images without a
  patient each their own) when there are at least ``min_held_out_images``; else on the
  training images themselves, with a warning (the ``best`` checkpoint then follows the
  training fit);
- post-processing thresholds kept from ``--init`` unless the held-out images are at least
  ``min_tune_images`` (tuning on two images overfits them).

:func:`freeze_encoder` keeps the encoder's weights and batch-norm statistics fixed
(``--freeze-encoder``): only the decoder and head learn.
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from glandseg import GlandsegError
from glandseg.data.discover import Sample, discover

log = logging.getLogger(__name__)

#: Small-set defaults (``--init`` and at most ``max_images`` annotated training images).
SMALL_SET = {
    "max_images": 20,
    "lr": 1e-4,
    "steps": 60,            # optimizer steps of a run, whatever the number of images
    "epochs": 6,            # validated after each: steps / epochs per epoch
    "val_fraction": 1 / 3,
    "min_held_out_images": 6,
    "min_tune_images": 5,   # held-out images needed to tune post-processing
}


def training_samples(data: str) -> list[Sample]:
    """The samples to train on in ``data``: the GlaS ``train`` part when the folder has one,
    else every annotated image of any other name (label images or QuPath GeoJSON, e.g. a
    folder of corrected predictions); images without annotation are left out (said once).
    Raises :class:`GlandsegError` when there is nothing annotated."""
    samples = discover(data)
    refuse_slides(Path(data), samples)
    train = [s for s in samples if s.split == "train"]
    if train:
        return train
    other = [s for s in samples if s.split == "other"]
    annotated = [s for s in other if s.anno is not None]
    if not annotated:
        raise GlandsegError(f"{data}: no annotated training images (train_N + train_N_anno, "
                            "or any <stem>.<image> with <stem>_anno.<ext> or a QuPath "
                            "<stem>.geojson beside it)")
    if len(annotated) < len(other):
        log.info("%d of %d images have no annotation and are left out of training",
                 len(other) - len(annotated), len(other))
    return annotated


def refuse_slides(root: Path, samples: list[Sample]) -> None:
    """A one-line error when annotations belong to whole slides (a slide format beside a
    ``<stem>.geojson``, or a large/pyramidal image): training reads whole images, and
    reading only the ``Region*`` boxes of a slide is not supported yet."""
    from glandseg.data.slide import SLIDE_EXTS, is_large

    fix = ("whole-slide GeoJSON training is not supported yet: export each Region* as an "
           "image with its annotations (QuPath: Export images > original pixels, cropped to "
           "the region, and its objects as GeoJSON), or crop it with glandseg's slide reader")
    for s in samples:
        if s.anno is not None and is_large(s.image):
            raise GlandsegError(f"{s.image}: a whole slide or large image; {fix}")
    for gj in [*root.glob("*.geojson"), *root.glob("*/*.geojson")]:
        for ext in SLIDE_EXTS:
            slide = gj.with_name(gj.stem.removesuffix("_anno") + ext)
            if slide.is_file():
                raise GlandsegError(f"{gj}: annotates the slide {slide.name}; {fix}")


def apply_small_set(train: dict, n_images: int, defaults: dict,
                    given: Iterable[str] = ()) -> list[str]:
    """Fill the small-set defaults (module doc) into a run's ``train`` settings where they
    were left at their defaults: still at ``defaults`` (the
    :class:`~glandseg.train.config.TrainConfig` defaults) and not ``given`` explicitly (a
    command-line option equal to the default still counts as given); only with ``init``
    set, no preset or explicit stages, and ``n_images`` (annotated training images) at
    most ``SMALL_SET["max_images"]``. Changes ``train`` in place (its single stage too);
    returns the notes of what changed (also logged)."""
    given = set(given)

    def left(key: str, value: object) -> bool:
        return key not in given and value == defaults[key]

    s = SMALL_SET
    if not train.get("init") or train.get("preset") or n_images > s["max_images"]:
        return []
    if len(train.get("stages") or []) != 1:
        return []
    stage = train["stages"][0]
    notes = []
    if left("lr", stage["lr"]):
        stage["lr"] = train["lr"] = s["lr"]
        notes.append(f"lr {s['lr']:g}")
    held_out = n_images >= s["min_held_out_images"]
    if left("val_fraction", train["val_fraction"]):
        train["val_fraction"] = s["val_fraction"] if held_out else 0.0
        notes.append("validation on about a third of the images (whole patients)" if held_out
                     else "validation on the training images (fewer than "
                          f"{s['min_held_out_images']} images)")
    n_train = n_images - (round(n_images * train["val_fraction"]) if held_out else 0)
    if left("epochs", stage["epochs"]) and left("repeats", train["repeats"]):
        per_epoch = s["steps"] * stage["batch_size"] / s["epochs"]
        train["repeats"] = max(1, math.ceil(per_epoch / max(1, n_train)))
        stage["epochs"] = train["epochs"] = s["epochs"]
        notes.append(f"{s['epochs']} epochs of {train['repeats']} passes over the images")
    if train.get("tune_postprocess", True) and round(n_images * train["val_fraction"]) < s["min_tune_images"]:
        train["tune_postprocess"] = False
        notes.append(f"post-processing kept from {train['init']} (fewer than "
                     f"{s['min_tune_images']} held-out images to tune it on)")
    if notes:
        msg = (f"fine-tuning {train['init']} on {n_images} image(s): small-set defaults: "
               + "; ".join(notes))
        log.info("%s", msg)
        train.setdefault("notes", []).append(msg)
    return notes


def encoder_of(model: nn.Module) -> list[nn.Module]:
    """The encoder modules of a network: ``encoder`` (the EfficientNet U-Nets), the
    contracting path (``downs`` and ``bottleneck``, the plain U-Net) or the ResNet body of
    Mask R-CNN (``backbone.body``). Raises :class:`GlandsegError` for other networks."""
    if isinstance(getattr(model, "encoder", None), nn.Module):
        return [model.encoder]
    if isinstance(getattr(model, "downs", None), nn.Module):
        return [model.downs, model.bottleneck]
    body = getattr(getattr(model, "backbone", None), "body", None)
    if isinstance(body, nn.Module):
        return [body]
    raise GlandsegError(f"--freeze-encoder: {type(model).__name__} has no encoder to freeze; "
                        "leave the option out")


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_encoder(model: nn.Module) -> int:
    """Freeze the encoder of ``model`` (:func:`encoder_of`): no gradients, and batch-norm
    statistics kept (it stays in eval mode when the model is put in training mode).
    Returns the number of frozen parameters."""
    n = 0
    for enc in encoder_of(model):
        for p in enc.parameters():
            p.requires_grad_(False)
            n += p.numel()
        for m in enc.modules():
            m.train = types.MethodType(_stay_eval, m)
        enc.eval()
    log.info("encoder frozen: %d parameters fixed", n)
    return n
