"""A lazy GlaS dataset: it keeps paths only and decodes an image when asked for it
(the study's memory-efficient batch generator), with an optional in-RAM cache.

Items are dicts: ``image`` float32 ``(3, H, W)`` in [0, 1], ``labels`` int64 ``(H, W)``
(0 = background, 1..N = glands), ``name`` str, plus whatever ``target_fn`` adds.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from glandseg import GlandsegError
from glandseg.data.discover import Sample
from glandseg.data.io import read_image, read_label
from glandseg.data.transforms import scale_pair

log = logging.getLogger(__name__)


class GlasDataset(Dataset):
    """Lazy dataset over :class:`Sample` paths.

    Parameters
    ----------
    samples: the samples (each must have an annotation).
    transform: a ``torchvision.transforms.v2`` transform applied jointly to
        ``(tv_tensors.Image uint8, tv_tensors.Mask int64)``.
    scale: resampling factor applied before the transform (0.5 = half resolution).
    cache: keep decoded, scaled images in RAM after first access (per worker).
    target_fn: ``labels (H, W) int64 tensor → dict of extra tensors`` (model targets).
    repeats: length multiplier, so one epoch can visit each image several times.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable | None = None,
        scale: float = 1.0,
        cache: bool = False,
        target_fn: Callable[[torch.Tensor], dict] | None = None,
        repeats: int = 1,
    ) -> None:
        missing = [s.name for s in samples if s.anno is None]
        if missing:
            raise GlandsegError(
                f"no annotation for {', '.join(missing[:5])}; training and validation need "
                "<stem>_anno files next to the images"
            )
        self.samples = list(samples)
        self.transform = transform
        self.scale = scale
        self.cache = cache
        self.target_fn = target_fn
        self.repeats = repeats
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded, scaled ``(image uint8 (3, H, W), labels int64 (H, W))`` of sample ``i``."""
        if i in self._cache:
            return self._cache[i]
        s = self.samples[i]
        img = torch.from_numpy(read_image(s.image)).permute(2, 0, 1).contiguous()
        lab = torch.from_numpy(read_label(s.anno).astype(np.int64))
        if img.shape[-2:] != lab.shape:
            raise GlandsegError(
                f"{s.anno}: annotation is {tuple(lab.shape)} but image is {tuple(img.shape[-2:])}"
            )
        img, lab = scale_pair(img, lab[None], self.scale)
        out = (img, lab[0])
        if self.cache:
            self._cache[i] = out
        return out

    def __getitem__(self, idx: int) -> dict:
        i = idx % len(self.samples)
        img, lab = self.load(i)
        image, mask = tv_tensors.Image(img), tv_tensors.Mask(lab)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        item = {
            "image": image.as_subclass(torch.Tensor).float() / 255.0,
            "labels": mask.as_subclass(torch.Tensor).long(),
            "name": self.samples[i].name,
        }
        if self.target_fn is not None:
            item.update(self.target_fn(item["labels"]))
        return item


def patient_split(
    samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into train/validation by patient ID so no patient is on both sides.

    Patients are shuffled with ``seed`` and added to validation until it holds about
    ``val_fraction`` of the images, keeping benign and malignant patients in proportion
    where grades are known. Samples without a patient ID are each their own patient.
    """
    groups: dict[object, list[Sample]] = {}
    for s in samples:
        key = s.patient if s.patient is not None else f"_{s.name}"
        groups.setdefault(key, []).append(s)
    rng = random.Random(seed)
    keys = sorted(groups, key=str)
    rng.shuffle(keys)
    target = val_fraction * len(samples)
    val_keys: set = set()
    n_val = 0
    # Alternate malignant-majority and benign-majority patients for balance.
    def majority(k: object) -> str:
        grades = [s.grade for s in groups[k]]
        return "malignant" if grades.count("malignant") * 2 >= len(grades) else "benign"

    queues = {g: [k for k in keys if majority(k) == g] for g in ("malignant", "benign")}
    turn = ["malignant", "benign"]
    t = 0
    while n_val < target and (queues["malignant"] or queues["benign"]):
        g = turn[t % 2]
        t += 1
        if not queues[g]:
            continue
        k = queues[g].pop(0)
        if n_val + len(groups[k]) > target * 1.5 and n_val > 0:
            continue
        val_keys.add(k)
        n_val += len(groups[k])
    train = [s for s in samples if (s.patient if s.patient is not None else f"_{s.name}") not in val_keys]
    val = [s for s in samples if (s.patient if s.patient is not None else f"_{s.name}") in val_keys]
    return train, val
