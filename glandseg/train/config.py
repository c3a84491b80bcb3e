"""The typed, validated, frozen training config: what ``glandseg train`` (and the API, the
search, ``--params`` files and presets) hands the :class:`~glandseg.train.loop.Trainer`.

One table of defaults: the fields of :class:`TrainConfig`; one table of ranges:
:data:`NUMBERS` and :data:`CHOICES` (the CLI's option types, ``--params`` files and the
config itself use them). A bad value is a one-line :class:`~glandseg.GlandsegError` naming
where it came from and the field, as :class:`~glandseg.models.config.ModelConfig` gives.

:func:`build_train_config` layers the sources, weakest first: the defaults, the preset's
settings, a params file, then the options given (on the command line): a given option
always wins, even when its value equals the default (the CLI passes only what was typed:
its options default to ``None``, a sentinel). A stage setting (``epochs``, ``lr``,
``batch_size``, ...) from a params file or the command line replaces that setting in every
stage of a preset. :func:`resume_conflicts` names the options of a ``--resume`` that differ
from the run's own (``--max-minutes`` and ``--device`` may change). No torch import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glandseg.models import registry
from glandseg.models.config import check_bool, check_choice, check_number, config_error
from glandseg.train.params import CHOICES, NUMBERS, check_loss_weights
from glandseg.train.presets import PRESETS, preset_settings, preset_stages

#: Ranges (:data:`glandseg.train.params.NUMBERS`; ``None`` is accepted where the default is
#: ``None``: ``scale``, ``tile``, ``max_minutes``) and choices of the settings.
BOOLS = ("resume", "pretrained", "tune_postprocess", "robust", "freeze_encoder")
#: The settings of one stage (a preset has one or more stages).
STAGE_KEYS = ("optimizer", "lr", "weight_decay", "batch_size", "epochs", "momentum", "schedule")
#: Options a ``--resume`` may change (everything else must be the run's).
RESUME_MAY_CHANGE = ("out", "resume", "max_minutes", "device")
#: Field → the ``glandseg train`` option that sets it (for messages).
OPTION = {"tune_postprocess": "--no-tune", "model_args": "--model-args"}


def option_name(name: str) -> str:
    """The command-line option of a :class:`TrainConfig` field (``batch_size`` →
    ``--batch-size``)."""
    return OPTION.get(name, "--" + name.replace("_", "-"))


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``glandseg train`` accepts, checked on construction (one-line errors
    naming ``where`` and the field). ``stages`` overrides the single-stage optimizer
    settings (see :mod:`glandseg.train.presets`); ``given``: the fields set explicitly
    (by the command line, a params file or a preset), which a ``--resume`` compares with
    the run's and the small-set defaults of fine-tuning leave alone."""

    model: str = "unet-lite0"
    data: str = ""
    out: str = "runs/unet-lite0"
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    crop: int = 256
    scale: float | None = None
    tile: int | None = None
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    repeats: int = 2
    val_fraction: float = 0.2
    val_every: int = 1
    max_minutes: float | None = None
    resume: bool = False
    preset: str | None = None
    pretrained: bool = True
    tune_postprocess: bool = True
    stages: list[dict] = field(default_factory=list)
    model_args: dict = field(default_factory=dict)
    augment_strength: float = 1.0  # scales every random augmentation (AugmentConfig.strength)
    loss_weights: dict = field(default_factory=dict)  # glandseg.train.params.LOSS_PARTS
    #: Start from a trained model (bundled name, run folder or .safetensors file): its
    #: architecture, preprocessing, tiling and post-processing are kept, its weights loaded
    #: before the first step (fine-tuning, e.g. on a lab's own annotated images).
    init: str | None = None
    #: Acquisition-robustness augmentation (AugmentConfig.robust: stain, blur, JPEG).
    robust: bool = False
    #: Probability of the stain and blur robustness augmentations (JPEG: half of it).
    robust_p: float = 0.5
    #: Weight of the blur-consistency term of the U-Nets' loss (DenseTask; 0 = off).
    consistency: float = 0.0
    #: Keep the encoder's weights and batch-norm statistics fixed (glandseg.train.finetune).
    freeze_encoder: bool = False
    #: The fields set explicitly (see the class doc); not compared, not a setting.
    given: tuple[str, ...] = field(default=(), compare=False)
    #: Where the values came from, for messages.
    where: str = field(default="training config", compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, value in check_fields(self.where, {
                f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("given", "where")}, model=self.model).items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "given", tuple(self.given))

    def resolved_stages(self) -> list[dict]:
        """The stages to run: ``stages``, else the preset's for ``model``, else one stage of
        the optimizer settings."""
        if self.stages:
            return [dict(s) for s in self.stages]
        if self.preset:
            return preset_stages(self.preset, self.model)
        return [{"optimizer": self.optimizer, "lr": self.lr, "weight_decay": self.weight_decay,
                 "batch_size": self.batch_size, "epochs": self.epochs, "momentum": self.momentum,
                 "schedule": self.schedule}]

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (``config.json``'s ``train``; ``where`` and
        ``given`` left out)."""
        d = dataclasses.asdict(self)
        del d["where"], d["given"]
        return d


#: The defaults (the one table: :class:`TrainConfig`'s fields).
DEFAULTS: dict[str, Any] = {f.name: (f.default if f.default is not dataclasses.MISSING
                                     else f.default_factory())  # type: ignore[misc]
                            for f in dataclasses.fields(TrainConfig)
                            if f.name not in ("given", "where")}


def check_number_field(where: str, name: str, value: object) -> float | int:
    integer, lo, hi, lo_open = NUMBERS[name]
    return check_number(where, name, value, lo, hi, integer=integer, lo_open=lo_open)


def check_stage(where: str, stage: object, i: int = 0) -> dict:
    """One stage (``{"optimizer", "lr", "weight_decay", "batch_size", "epochs"[, "momentum",
    "schedule"]}``), checked."""
    key = f"stages[{i}]"
    if not isinstance(stage, Mapping):
        raise config_error(where, f"{key} must be an object of {', '.join(STAGE_KEYS)}")
    out = {}
    for k, v in stage.items():
        if k not in STAGE_KEYS:
            raise config_error(where, f"unknown key {key}.{k} (allowed: {', '.join(STAGE_KEYS)})")
        if k in CHOICES:
            out[k] = check_choice(where, f"{key}.{k}", v, CHOICES[k])
        else:
            integer, lo, hi, lo_open = NUMBERS[k]
            out[k] = check_number(where, f"{key}.{k}", v, lo, hi, integer=integer,
                                  lo_open=lo_open)
    missing = [k for k in ("optimizer", "lr", "weight_decay", "batch_size", "epochs")
               if k not in out]
    if missing:
        raise config_error(where, f"{key} lacks {', '.join(missing)}")
    return out


def check_fields(where: str, raw: Mapping[str, Any], model: str | None = None) -> dict:
    """Checked copy of ``raw`` (:class:`TrainConfig` field → value); an unknown field is an
    error naming it. ``model``: the architecture that ``loss_weights`` are for when
    ``raw`` names none."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in DEFAULTS:
            raise config_error(where, f"unknown training setting {k!r}; use "
                                      f"{', '.join(DEFAULTS)}")
        if k in NUMBERS:
            out[k] = None if v is None and DEFAULTS[k] is None else check_number_field(where, k, v)
        elif k in CHOICES:
            out[k] = check_choice(where, k, v, CHOICES[k]) if k != "device" or not (
                isinstance(v, str) and v.startswith(("cuda:", "mps:"))) else v
        elif k in BOOLS:
            out[k] = check_bool(where, k, v)
        elif k == "model":
            out[k] = check_choice(where, k, v, [n for n in registry.names()
                                                if n not in registry.BUNDLED])
        elif k == "preset":
            out[k] = None if v is None else check_choice(where, k, v, tuple(PRESETS))
        elif k in ("data", "out", "init"):
            if not (isinstance(v, str) or (v is None and k == "init")):
                raise config_error(where, f"{k} must be a path, got {v!r}")
            out[k] = v
        elif k in ("model_args", "loss_weights"):
            if not isinstance(v, Mapping):
                raise config_error(where, f"{k} must be an object, got {v!r}")
            out[k] = (dict(v) if k == "model_args" else
                      check_loss_weights(raw.get("model", model or "unet"), v, where))
        elif k == "stages":
            if not isinstance(v, list | tuple):
                raise config_error(where, f"stages must be a list of objects, got {v!r}")
            out[k] = [check_stage(where, s, i) for i, s in enumerate(v)]
    return out


def _with_stage_options(stages: list[dict], options: Mapping[str, Any]) -> list[dict]:
    """``stages`` with each stage setting of ``options`` replacing the stage's."""
    over = {k: v for k, v in options.items() if k in STAGE_KEYS}
    return [{**s, **over} for s in stages]


def build_train_config(given: Mapping[str, Any], params: Mapping[str, Any] | None = None,
                       where: str = "command line") -> TrainConfig:
    """The :class:`TrainConfig` of ``glandseg train``: the defaults, then the settings of
    ``given["preset"]`` (if any), then ``params`` (a checked params file:
    :func:`glandseg.train.params.load_params`), then ``given`` (the options typed on the
    command line; absent = not given). ``model_args`` merge key by key in the same order.
    A stage setting from ``params`` or ``given`` replaces that setting in every stage of
    the preset."""
    params = dict(params or {})
    given = dict(given)
    preset = given.get("preset")
    settings = preset_settings(preset) if preset else {}
    layers = [settings, params, given]
    merged: dict[str, Any] = {}
    model_args: dict[str, Any] = {}
    for layer in layers:
        model_args.update(layer.get("model_args") or {})
        merged.update({k: v for k, v in layer.items() if k != "model_args"})
    merged["model_args"] = model_args
    explicit = {k for layer in layers for k in layer}
    if preset and not given.get("stages"):
        stage_options = {**{k: v for k, v in params.items() if k in STAGE_KEYS},
                         **{k: v for k, v in given.items() if k in STAGE_KEYS}}
        merged["stages"] = _with_stage_options(
            preset_stages(preset, merged.get("model", DEFAULTS["model"])), stage_options)
    return TrainConfig(**merged, given=tuple(sorted(explicit)), where=where)


def resume_conflicts(tc: TrainConfig, run_train: Mapping[str, Any]) -> list[str]:
    """The options given for a ``--resume`` (``tc.given``) whose values differ from the
    run's (``run_train``: its ``config.json``'s ``train``), as ``--option VALUE (the run's:
    X)``; ``--max-minutes`` and ``--device`` may change."""
    out = []
    for name in tc.given:
        if name in RESUME_MAY_CHANGE or name in ("given", "where"):
            continue
        mine = getattr(tc, name)
        if name == "model_args":
            theirs = run_train.get(name) or {}
            diff = {k: v for k, v in mine.items() if theirs.get(k) != v}
            if diff:
                out.append(f"{option_name(name)} {diff} (the run's: "
                           f"{ {k: theirs.get(k) for k in diff} })")
            continue
        if name == "stages":
            continue  # implied by the preset and the stage options, compared on their own
        theirs = run_train.get(name, DEFAULTS.get(name))
        if mine != theirs:
            out.append(f"{option_name(name)} {mine!r} (the run's: {theirs!r})")
    return out
