"""The checks and the typed sections of a model config (everything but the whole
:class:`glandseg.models.config.ModelConfig`, which also checks against the architectures).

One-line checks (:func:`check_number`, :func:`check_keys`, ...) raising
:class:`~glandseg.GlandsegError` ``"WHERE: MSG"``; :class:`Preprocess`, :class:`Tiling` and
the post-processing parameters of each task (:data:`POSTPROCESS`). The lowest module of
``glandseg.models``: it imports neither torch nor numpy, nor another model module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from glandseg import GlandsegError

#: What a model predicts, and so how its output becomes a label image.
TASKS = ("contour", "binary", "instances")
#: Keys of a config file that glandseg reads.
CONFIG_KEYS = ("model", "task", "model_args", "preprocess", "tiling", "postprocess")
#: Keys kept as opaque metadata (written by ``train`` and ``export``; never interpreted here).
METADATA_KEYS = ("train", "validation", "model_card", "provenance", "evaluation", "notes")

TILE_MIN, TILE_MAX = 64, 8192
SCALE_MIN, SCALE_MAX = 0.05, 4.0
#: Resolution (µm/px) of GlaS (20x objective): the default resolution of every model.
GLAS_MPP = 0.62005
#: Accepted model resolutions, µm/px (a 100x objective is ~0.1; a 1.25x overview ~8).
MPP_MIN, MPP_MAX = 0.01, 100.0
MAX_AREA = 10**8  # px: larger than any histology tile glandseg reads whole


# --- checks (shared with the registry's architecture checks) ---------------------------

def config_error(where: str, msg: str) -> GlandsegError:
    """``GlandsegError("WHERE: MSG")``: ``where`` is the config file (or option) at fault."""
    return GlandsegError(f"{where}: {msg}")


def check_keys(where: str, section: str, raw: Mapping, allowed: Iterable[str]) -> None:
    """Raise naming the first key of ``raw`` that is not ``allowed`` (``section.key``)."""
    allowed = tuple(allowed)
    for k in raw:
        if k not in allowed:
            name = f"{section}.{k}" if section else str(k)
            raise config_error(where, f"unknown key {name!r} (allowed: {', '.join(allowed)}); "
                                      "remove it or fix its spelling")


def as_object(where: str, key: str, value: object) -> dict:
    """``value`` if it is a JSON object (dict), else a one-line error naming ``key``."""
    if not isinstance(value, Mapping):
        raise config_error(where, f"{key!r} must be a JSON object, got {json_kind(value)}")
    return dict(value)


def check_number(where: str, key: str, value: object, lo: float, hi: float, *,
                 integer: bool = False, lo_open: bool = False) -> float | int:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); an ``integer`` may be
    written ``300.0``. Booleans are not numbers here."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        what = "an integer" if integer else "a number"
        rng = f"{'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}]"
        raise config_error(where, f"{key} must be {what} in {rng}, got {value!r}")
    return int(value) if integer else float(value)


def check_bool(where: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise config_error(where, f"{key} must be true or false, got {value!r}")
    return value


def check_choice(where: str, key: str, value: object, choices: Iterable[object]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise config_error(where, f"{key} must be one of {', '.join(map(repr, choices))}, "
                                  f"got {value!r}")
    return value


def check_int_list(where: str, key: str, value: object, length: int, lo: int, hi: int
                   ) -> list[int]:
    if not isinstance(value, list | tuple) or len(value) != length:
        raise config_error(where, f"{key} must be a list of {length} integers, got {value!r}")
    return [check_number(where, f"{key}[{i}]", v, lo, hi, integer=True)
            for i, v in enumerate(value)]


def json_kind(value: object) -> str:
    """``value``'s JSON kind for messages: ``a list``, ``a string``, ``null``, ..."""
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --- sections ------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocess:
    """How an RGB image ``uint8 (H, W, 3)`` is fed to the model: first brought to ``mpp``
    (µm per pixel: the resolution of the images the model was trained on, GlaS 0.62005),
    then resized by ``scale`` (the working scale), divided by 255, then
    ``(x - mean) / std`` per channel (R, G, B). Post-processing thresholds (areas in px)
    are in pixels at ``mpp``."""

    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mpp: float = GLAS_MPP

    @classmethod
    def from_dict(cls, raw: Mapping, where: str = "preprocess") -> Preprocess:
        check_keys(where, "preprocess", raw, ("mpp", "scale", "mean", "std"))
        for k in ("scale", "mean", "std"):
            if k not in raw:
                raise config_error(where, f"'preprocess.{k}' is missing")
        scale = check_number(where, "preprocess.scale", raw["scale"], SCALE_MIN, SCALE_MAX)
        mean = _triple(where, "preprocess.mean", raw["mean"], 0.0, 1.0, lo_open=False)
        std = _triple(where, "preprocess.std", raw["std"], 0.0, 10.0, lo_open=True)
        mpp = check_number(where, "preprocess.mpp", raw.get("mpp", GLAS_MPP), MPP_MIN, MPP_MAX)
        return cls(scale, mean, std, mpp)

    def as_dict(self) -> dict:
        return {"mpp": self.mpp, "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std)}


def _triple(where: str, key: str, value: object, lo: float, hi: float, *, lo_open: bool
            ) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise config_error(where, f"{key} must be a list of 3 numbers (R, G, B), got {value!r}")
    a, b, c = (check_number(where, f"{key}[{i}]", v, lo, hi, lo_open=lo_open)
               for i, v in enumerate(value))
    return a, b, c


@dataclass(frozen=True)
class Tiling:
    """Tiling in pixels at the model's working scale: an image whose scaled sides both fit
    in ``tile`` is predicted whole (most context), larger ones in ``tile``-sized windows
    overlapping by ``overlap`` (at most ``tile / 2``), ``batch_size`` windows per forward.

    Checked on construction (``tile`` in [64, 8192]): a bad value is a one-line error.
    """

    tile: int = 512
    overlap: int = 96
    batch_size: int = 2

    def __post_init__(self) -> None:
        t, o, b = _check_tiling("tiling", self.tile, self.overlap, self.batch_size, prefix="")
        object.__setattr__(self, "tile", t)  # 512.0 → 512
        object.__setattr__(self, "overlap", o)
        object.__setattr__(self, "batch_size", b)

    @classmethod
    def from_dict(cls, raw: Mapping, where: str = "tiling") -> Tiling:
        """Fields of ``raw`` over the defaults above, checked (errors name ``where``)."""
        check_keys(where, "tiling", raw, _names(cls))
        merged = {**_defaults(cls), **raw}
        return cls(*_check_tiling(where, merged["tile"], merged["overlap"], merged["batch_size"]))

    def with_tile(self, tile: object, option: str = "--tile") -> Tiling:
        """This tiling with another ``tile`` (e.g. a command-line option; errors name
        ``option``); the overlap shrinks to at most ``tile // 4``."""
        t = check_number(option, "tile", tile, TILE_MIN, TILE_MAX, integer=True)
        return Tiling(t, min(self.overlap, t // 4), self.batch_size)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_tiling(where: str, tile: object, overlap: object, batch_size: object,
                  prefix: str = "tiling.") -> tuple[int, int, int]:
    """Tile side in [64, 8192] px, overlap in [0, tile / 2], batch size in [1, 256]."""
    t = check_number(where, f"{prefix}tile", tile, TILE_MIN, TILE_MAX, integer=True)
    o = check_number(where, f"{prefix}overlap", overlap, 0, t // 2, integer=True)
    b = check_number(where, f"{prefix}batch_size", batch_size, 1, 256, integer=True)
    return t, o, b


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _defaults(cls: type) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _threshold(default: float) -> Any:
    return field(default=default, metadata={"kind": "float", "range": (0.0, 1.0)})


def _area(default: int) -> Any:
    return field(default=default, metadata={"kind": "int", "range": (0, MAX_AREA)})


@dataclass(frozen=True)
class PostParams:
    """Post-processing parameters of one task; fields carry ``kind`` and ``range``."""

    task: ClassVar[str] = ""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parameter names, in order."""
        return _names(cls)

    @classmethod
    def from_dict(cls, raw: Mapping, where: str = "post-processing parameters",
                  base: PostParams | None = None) -> PostParams:
        """Fields of ``raw`` over ``base`` (default: the defaults), each checked; an unknown
        key is an error naming it."""
        if not isinstance(raw, Mapping):
            raise config_error(where,
                               f"'postprocess' must be a JSON object, got {json_kind(raw)}")
        check_keys(where, "postprocess", raw, _names(cls))
        merged = {**(dataclasses.asdict(base) if base is not None else _defaults(cls)), **raw}
        out = {}
        for f in dataclasses.fields(cls):
            key, v = f"postprocess.{f.name}", merged[f.name]
            if f.metadata["kind"] == "bool":
                out[f.name] = check_bool(where, key, v)
            else:
                lo, hi = f.metadata["range"]
                out[f.name] = check_number(where, key, v, lo, hi,
                                           integer=f.metadata["kind"] == "int")
        return cls(**out)

    def updated(self, params: Mapping, where: str = "post-processing parameters") -> PostParams:
        """A copy with ``params`` (a subset of the fields) replaced, checked."""
        return type(self).from_dict(params, where, base=self)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ContourPost(PostParams):
    """``contour`` task (background/interior/boundary): watershed from interior seeds.
    ``boundary_weight`` ``a``: seeds and the watershed relief from ``interior - a *
    boundary`` (0: the interior probability alone), which keeps glands whose gap is
    faint (a blurred scan) apart."""

    task: ClassVar[str] = "contour"
    interior_threshold: float = _threshold(0.5)
    foreground_threshold: float = _threshold(0.5)
    min_area: int = _area(100)
    min_seed_area: int = _area(30)
    fill_holes: bool = field(default=True, metadata={"kind": "bool"})
    boundary_weight: float = field(default=0.0, metadata={"kind": "float", "range": (0.0, 10.0)})


@dataclass(frozen=True)
class BinaryPost(PostParams):
    """``binary`` task (foreground probability): threshold, optional distance watershed."""

    task: ClassVar[str] = "binary"
    foreground_threshold: float = _threshold(0.5)
    min_area: int = _area(100)
    split_h: float = field(default=0.0, metadata={"kind": "float", "range": (0.0, 1000.0)})
    fill_holes: bool = field(default=True, metadata={"kind": "bool"})


@dataclass(frozen=True)
class InstancePost(PostParams):
    """``instances`` task (Mask R-CNN): score and mask thresholds, minimum piece area."""

    task: ClassVar[str] = "instances"
    score_threshold: float = _threshold(0.5)
    mask_threshold: float = _threshold(0.5)
    min_area: int = _area(100)


#: The post-processing parameters of each task.
POSTPROCESS: dict[str, type[PostParams]] = {
    "contour": ContourPost, "binary": BinaryPost, "instances": InstancePost}


def postprocess_params(task: str, params: Mapping | PostParams | None = None,
                       where: str = "post-processing parameters") -> PostParams:
    """The checked post-processing parameters of ``task``: ``params`` over the defaults."""
    check_choice(where, "task", task, TASKS)
    if isinstance(params, PostParams):
        if params.task != task:
            raise config_error(where, f"{type(params).__name__} is not for task {task!r}")
        return params
    return POSTPROCESS[task].from_dict(params or {}, where)
