"""The typed, validated model config: what rebuilds, feeds and post-processes a model.

A config file (``config.json`` of a run, ``glandseg/weights/NAME.json`` of a bundled model)
is a JSON object::

    {"model": "unet-lite0", "task": "contour", "model_args": {...},
     "preprocess": {"mpp": 0.62005, "scale": 0.5, "mean": [r, g, b], "std": [r, g, b]},
     "tiling": {"tile": 512, "overlap": 96, "batch_size": 2},
     "postprocess": {...thresholds of the task...},
     "train": {...}, "validation": {...}, "model_card": {...}}

:meth:`ModelConfig.from_dict` checks every key and range and fills what is missing from the
defaults, which live in one place each: the architecture's ``model_args``, ``task`` and
``preprocess`` in :mod:`glandseg.models.registry`, tiling and post-processing (per task) in
the dataclasses of this module. An unknown key at any level, a value of the wrong type or
out of range, or a task that does not fit the architecture is a one-line
:class:`~glandseg.GlandsegError` naming the file and the key. The metadata keys
(:data:`METADATA_KEYS`: ``train``, ``validation``, ``model_card``, ...) are kept as given,
never interpreted. The checks and sections live in :mod:`glandseg.models.sections` (re-exported
here); this module imports neither torch nor numpy.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glandseg.models import architectures
from glandseg.models.sections import (
    CONFIG_KEYS,
    GLAS_MPP,
    MAX_AREA,
    METADATA_KEYS,
    MPP_MAX,
    MPP_MIN,
    POSTPROCESS,
    SCALE_MAX,
    SCALE_MIN,
    TASKS,
    TILE_MAX,
    TILE_MIN,
    BinaryPost,
    ContourPost,
    InstancePost,
    PostParams,
    Preprocess,
    Tiling,
    as_object,
    check_bool,
    check_choice,
    check_int_list,
    check_keys,
    check_number,
    config_error,
    json_kind,
    postprocess_params,
)

__all__ = ["CONFIG_KEYS", "GLAS_MPP", "MAX_AREA", "METADATA_KEYS", "MPP_MAX", "MPP_MIN",
           "POSTPROCESS", "SCALE_MAX", "SCALE_MIN", "TASKS", "TILE_MAX", "TILE_MIN",
           "BinaryPost", "ContourPost", "InstancePost", "ModelConfig", "PostParams",
           "Preprocess", "Tiling", "as_object", "check_bool", "check_choice",
           "check_int_list", "check_keys", "check_number", "config_error", "json_kind",
           "postprocess_params"]


# --- the whole config ----------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """A checked model config (see the module docstring).

    ``model``: architecture name (``None`` for a model built elsewhere, e.g. a test stub
    handed to the Predictor); ``model_args``: the architecture's arguments (checked by the
    registry, defaults filled); ``metadata``: the informational keys, as given;
    ``source``: the file it was read from (for messages).
    """

    model: str | None
    task: str
    model_args: Mapping[str, Any]
    preprocess: Preprocess
    tiling: Tiling
    postprocess: PostParams
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, raw: object, source: str | None = None, *,
                  require_model: bool = True) -> ModelConfig:
        """Check ``raw`` (a parsed config file) and fill its defaults.

        ``source`` names the file in error messages. With ``require_model=False`` (the
        Predictor, given an already built network) the ``model`` key may be missing or
        name an unregistered network; ``task`` and ``preprocess`` are then required.
        """
        where = str(source) if source else "model config"
        if not isinstance(raw, Mapping):
            raise config_error(where, f"a model config must be a JSON object, got {json_kind(raw)}; "
                                      "use the config.json written by `glandseg train`")
        check_keys(where, "", raw, (*CONFIG_KEYS, *METADATA_KEYS))
        name = raw.get("model")
        if name is None and require_model:
            raise config_error(where, "no 'model' key (the architecture name, one of "
                                      f"{', '.join(architectures.architectures())}); use the "
                                      "config.json written by `glandseg train`")
        if name is not None and not isinstance(name, str):
            raise config_error(where, f"'model' must be a string, got {raw['model']!r}")
        known = name in architectures.architectures()
        if name is not None and not known and require_model:
            raise config_error(where, f"unknown model {name!r}; choose one of "
                                      f"{', '.join(architectures.architectures())}")
        defaults = architectures.default_config(name) if known else {}
        for k in ("task", "preprocess") if not known else ():
            if k not in raw:
                raise config_error(where, f"no {k!r} key")
        task = check_choice(where, "task", raw.get("task", defaults.get("task")), TASKS)
        args = as_object(where, "model_args", raw.get("model_args", {}))
        if known:
            args = architectures.check_model_args(name, args, task, where)
        pre = as_object(where, "preprocess", raw.get("preprocess", {}))
        tiling = as_object(where, "tiling", raw.get("tiling", {}))
        return cls(
            model=name, task=task, model_args=args,
            preprocess=Preprocess.from_dict({**defaults.get("preprocess", {}), **pre}, where),
            tiling=Tiling.from_dict({**defaults.get("tiling", {}), **tiling}, where),
            postprocess=POSTPROCESS[task].from_dict(raw.get("postprocess", {}), where),
            metadata={k: copy.deepcopy(raw[k]) for k in METADATA_KEYS if k in raw},
            source=str(source) if source else None,
        )

    def to_dict(self) -> dict:
        """The JSON-able dict (defaults filled, metadata as given), as a config file holds."""
        d: dict[str, Any] = {} if self.model is None else {"model": self.model}
        d.update(task=self.task, model_args=copy.deepcopy(dict(self.model_args)),
                 preprocess=self.preprocess.as_dict(), tiling=self.tiling.as_dict(),
                 postprocess=self.postprocess.as_dict())
        d.update(copy.deepcopy(dict(self.metadata)))
        return d

    @property
    def mpp(self) -> float:
        """The model's resolution in µm per pixel (``preprocess.mpp``): inputs are rescaled
        to it before prediction."""
        return self.preprocess.mpp

    def with_postprocess(self, params: Mapping) -> ModelConfig:
        """A copy whose post-processing has ``params`` replaced (checked)."""
        return dataclasses.replace(self, postprocess=self.postprocess.updated(params))
