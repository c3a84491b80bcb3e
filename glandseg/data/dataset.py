"""A lazy GlaS dataset: it keeps paths only and decodes an image when asked for it
(the study's memory-efficient batch generator), with an optional in-RAM cache.

Items are dicts: ``image`` float32 ``(3, H, W)`` in [0, 1], ``labels`` int64 ``(H, W)``
(0 = background, 1..N = glands), ``name`` str, plus whatever ``target_fn`` adds. When any
annotation is a QuPath GeoJSON file (:mod:`glandseg.data.geojson`), every item also has
``valid``, float32 ``(H, W)``: 0 where the pixel is left out of the loss (inside an
``Ignore*`` polygon, or outside the ``Region*`` polygons of a file that has some), 1 elsewhere.
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
from glandseg.data.geojson import is_geojson, read_geojson_label
from glandseg.data.io import read_image, read_label, read_mpp
from glandseg.data.transforms import scale_pair

log = logging.getLogger(__name__)

#: Added to the label of an ignored pixel while image and labels are augmented together
#: (nearest-neighbour resampling keeps it; 2 x 65536 is exact in float32, which torchvision's
#: rotation and elastic kernels resample masks in). Gland ids stay below it.
IGNORE_FLAG = 1 << 16


def load_annotation(sample: Sample, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels int32 (H, W), ignore bool (H, W) or None)`` of a sample's annotation at
    the image's ``shape``: a label image (nothing ignored) or a GeoJSON file rasterised
    (:func:`glandseg.data.geojson.read_geojson_label`). Raises :class:`GlandsegError` when
    a label image's size differs from the image's."""
    if is_geojson(sample.anno):
        r = read_geojson_label(sample.anno, shape)
        if r.labels.max(initial=0) >= IGNORE_FLAG:
            raise GlandsegError(f"{sample.anno}: more than {IGNORE_FLAG - 1} glands in one image; "
                                "split the image")
        return r.labels, r.ignore
    lab = read_label(sample.anno)
    if lab.shape != tuple(shape):
        raise GlandsegError(
            f"{sample.anno}: annotation is {tuple(lab.shape)} but image is {tuple(shape)}")
    return lab, None


def resolution_factor(path, mpp: float | None) -> float:
    """How much an image must be resampled to reach a model's resolution ``mpp`` (µm/px):
    the image's own µm/px from its metadata (:func:`glandseg.data.io.read_mpp`) over
    ``mpp``; 1 when either is unknown or they agree within 1 %."""
    if mpp is None:
        return 1.0
    own = read_mpp(path)[0]
    if own is None or abs(own / mpp - 1) <= 0.01:
        return 1.0
    return own / mpp


def validation_item(sample: Sample, mpp: float | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, image uint8 (h, w, 3), truth int32 (h, w))`` to validate on, resampled to
    the model's resolution ``mpp`` when the image's metadata gives another
    (:func:`resolution_factor`). With a GeoJSON annotation that ignores pixels, the image
    and truth are cut to the bounding box of the pixels not ignored (the ``Region*``
    polygons), and glands with most of their area ignored are removed from the truth
    (predictions there still count)."""
    image = read_image(sample.image)
    labels, ignore = load_annotation(sample, image.shape[:2])
    f = resolution_factor(sample.image, mpp)
    if f != 1.0:
        img_t = torch.from_numpy(image).permute(2, 0, 1)
        stack = np.stack([labels, ignore]) if ignore is not None else labels[None]
        img_t, lab_t = scale_pair(img_t, torch.from_numpy(stack.astype(np.int64)), f)
        image = img_t.permute(1, 2, 0).contiguous().numpy()
        labels = lab_t[0].numpy().astype(np.int32)
        ignore = lab_t[1].numpy().astype(bool) if ignore is not None else None
    if ignore is None:
        return sample.name, image, labels
    from glandseg.data.geojson import valid_bbox

    area = np.bincount(labels.ravel())
    ignored = np.bincount(labels[ignore].ravel(), minlength=len(area))
    drop = np.flatnonzero(ignored * 2 > area)
    drop = drop[drop > 0]
    if len(drop):
        labels = np.where(np.isin(labels, drop), 0, labels)
    sl = valid_bbox(ignore, labels.shape)
    return sample.name, np.ascontiguousarray(image[sl]), np.ascontiguousarray(labels[sl])


class GlasDataset(Dataset):
    """Lazy dataset over :class:`Sample` paths.

    Parameters
    ----------
    samples: the samples (each must have an annotation).
    transform: a ``torchvision.transforms.v2`` transform applied jointly to
        ``(tv_tensors.Image uint8, tv_tensors.Mask int64)``.
    scale: resampling factor applied before the transform (0.5 = half resolution).
    mpp: the model's µm/px: an image whose metadata gives another resolution is also
        resampled by :func:`resolution_factor` (images without one are taken as they are).
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
        mpp: float | None = None,
    ) -> None:
        missing = [s.name for s in samples if s.anno is None]
        if missing:
            raise GlandsegError(
                f"no annotation for {', '.join(missing[:5])}; training and validation need "
                "<stem>_anno files (or QuPath <stem>.geojson) next to the images"
            )
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.samples = list(samples)
        self.transform = transform
        self.scale = scale
        self.cache = cache
        self.target_fn = target_fn
        self.repeats = repeats
        self.mpp = mpp
        #: Items carry a ``valid`` mask (any GeoJSON annotation may ignore pixels).
        self.with_valid = any(is_geojson(s.anno) for s in self.samples)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded, scaled ``(image uint8 (3, H, W), labels int64 (H, W))`` of sample ``i``;
        ignored pixels (GeoJSON) have :data:`IGNORE_FLAG` added to their label.

        With ``cache`` the same tensors are returned on every call: do not modify them.
        """
        if i in self._cache:
            return self._cache[i]
        s = self.samples[i]
        image = read_image(s.image)
        labels, ignore = load_annotation(s, image.shape[:2])
        img = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        lab = labels.astype(np.int64)
        if ignore is not None:
            lab += ignore * IGNORE_FLAG
        lab = torch.from_numpy(lab)
        img, lab = scale_pair(img, lab[None], self.scale * resolution_factor(s.image, self.mpp))
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
        elif self.cache:
            mask = mask.clone()  # the item must not share memory with the cache
        labels = mask.as_subclass(torch.Tensor).long()
        item = {
            "image": image.as_subclass(torch.Tensor).float() / 255.0,
            "labels": labels % IGNORE_FLAG,
            "name": self.samples[i].name,
        }
        if self.with_valid:
            item["valid"] = (labels < IGNORE_FLAG).float()
        if self.target_fn is not None:
            item.update(self.target_fn(item["labels"]))
        return item


def _patient_key(s: Sample) -> object:
    return s.patient if s.patient is not None else f"_{s.name}"


def patient_split(
    samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into train/validation by patient ID so no patient is on both sides.

    Patients are shuffled with ``seed`` and added to validation until it holds about
    ``val_fraction`` of the images, keeping benign and malignant patients in proportion
    where grades are known (each patient counts under the grade of most of its images).
    Samples without a patient ID are each their own patient. Both lists keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict[object, list[Sample]] = {}
    for s in samples:
        groups.setdefault(_patient_key(s), []).append(s)

    def majority(k: object) -> str:
        grades = [s.grade for s in groups[k]]
        return "malignant" if grades.count("malignant") * 2 > len(grades) else "benign"

    rng = random.Random(seed)
    keys = sorted(groups, key=str)
    rng.shuffle(keys)
    queues: dict[str, list[object]] = {"malignant": [], "benign": []}
    for k in keys:
        queues[majority(k)].append(k)
    # Per-grade targets in images, so validation keeps the data set's grade proportions.
    targets = {g: val_fraction * sum(len(groups[k]) for k in q) for g, q in queues.items()}
    taken = {g: 0 for g in queues}
    val_keys: set = set()
    while True:
        # The grade furthest below its target (relative to it) takes its next patient.
        open_grades = [g for g in queues if queues[g] and taken[g] < targets[g]]
        if not open_grades:
            break
        g = min(open_grades, key=lambda g: (taken[g] / targets[g], g))
        k = queues[g].pop(0)
        n = len(groups[k])
        # Skip a patient that would overshoot the target by much (try the next one).
        if taken[g] + n > targets[g] * 1.5 + 1:
            continue
        val_keys.add(k)
        taken[g] += n
    if not val_keys and val_fraction > 0 and len(groups) > 1:
        # Every patient was too big for the target: take the smallest one.
        val_keys.add(min(keys, key=lambda k: len(groups[k])))
    train = [s for s in samples if _patient_key(s) not in val_keys]
    val = [s for s in samples if _patient_key(s) in val_keys]
    log.debug("patient split: %d train, %d validation images", len(train), len(val))
    return train, val
