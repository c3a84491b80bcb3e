"""Load a model from a bundled name, an architecture name, a run folder or a weights file.

- ``glas-unet`` / ``glas-maskrcnn``: ``glandseg/weights/NAME.safetensors`` + ``NAME.json``;
- ``unet``, ``unet-lite0``, ``maskrcnn``, ``maskrcnn-lite0``: the registry's default config,
  untrained (ImageNet encoder where there is one);
- a run folder of ``glandseg train``: ``config.json`` + ``best.safetensors`` (else
  ``last.safetensors``);
- ``FILE.safetensors``: with ``FILE.json`` (else ``config.json``) beside it.

Every config is read through :class:`glandseg.models.config.ModelConfig` (keys and ranges
checked before a network is built), weights are safetensors (nothing is unpickled) and must
fit the network exactly. Every problem is a one-line :class:`~glandseg.GlandsegError` naming
the file. Inference loads models from here; the training engine is never imported, and
neither is torch until a network is built (the ONNX backend needs only the config).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from glandseg import GlandsegError
from glandseg.models import registry
from glandseg.models.config import ModelConfig

if TYPE_CHECKING:  # torch is imported when a network is built, not when this module is
    import torch
    from torch import nn

log = logging.getLogger(__name__)

__all__ = ["read_config", "load_config", "resolve_config", "resolve_model", "load_weights",
           "apply_weights", "load", "load_model"]


def read_config(path: str | Path) -> dict:
    """The JSON object of a config file, unchecked; one-line errors for a missing file,
    invalid JSON or anything but an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GlandsegError(f"{path}: not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise GlandsegError(f"{path}: cannot read this config ({_one_line(exc)})") from exc
    except json.JSONDecodeError as exc:
        raise GlandsegError(f"{path}: invalid JSON ({_one_line(exc)}); restore the config.json written "
                            "by `glandseg train`") from exc
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        raise GlandsegError(f"{path}: a model config must be a JSON object, got a {kind}; "
                            "restore the config.json written by `glandseg train`")
    return obj


def load_config(path: str | Path) -> ModelConfig:
    """Read and check a config file (errors name it)."""
    return ModelConfig.from_dict(read_config(path), str(path))


def resolve_config(spec: str) -> tuple[ModelConfig, Path | None]:
    """``NAME`` (architecture or bundled), ``RUN_DIR`` or ``FILE.safetensors`` →
    ``(checked config, weights path or None for an untrained architecture)``."""
    p = Path(spec)
    if p.is_dir():
        cfg_path = p / "config.json"
        if not cfg_path.is_file():
            raise GlandsegError(f"{p}: not a run folder (no config.json); pass a run folder from "
                                "`glandseg train`, a .safetensors file or a model name")
        cfg = load_config(cfg_path)
        for tag in ("best", "last"):
            if (p / f"{tag}.safetensors").is_file():
                return cfg, p / f"{tag}.safetensors"
        raise GlandsegError(f"{p}: no best.safetensors or last.safetensors; training has not "
                            "finished an epoch yet")
    if p.suffix == ".safetensors":
        for cand in (p.with_suffix(".json"), p.parent / "config.json"):
            if cand.is_file():
                return load_config(cand), p
        raise GlandsegError(f"{p}: no config next to it ({p.with_suffix('.json').name} or "
                            "config.json)")
    if spec in registry.BUNDLED:
        w = registry.bundled_path(spec)
        return load_config(w.with_suffix(".json")), w
    if spec in registry.architectures():
        return ModelConfig.from_dict(registry.default_config(spec), f"model {spec}"), None
    raise GlandsegError(f"unknown model {spec!r}: give one of {', '.join(registry.names())}, "
                        "a run folder or a .safetensors file")


def resolve_model(spec: str) -> tuple[dict, Path | None]:
    """As :func:`resolve_config`, with the config as a dict (checked, defaults filled,
    metadata kept): what a ``config.json`` holds."""
    cfg, weights = resolve_config(spec)
    return cfg.to_dict(), weights


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model`` (fp16 files are cast to the model's dtypes).
    Keys and shapes must match the model exactly (one-line error naming the file)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise GlandsegError(f"{path}: weights file not found")
    try:
        sd = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise GlandsegError(f"{path}: not a valid safetensors file ({_one_line(exc)})") from exc
    apply_weights(model, sd, path)


def apply_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy the tensors ``sd`` into ``model`` after checking that keys and shapes fit;
    errors name ``source`` (the file the tensors came from)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise GlandsegError(
            f"{source}: weights do not fit the model in its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise GlandsegError(
            f"{source}: weights do not fit the model in its config (shape of {k}: "
            f"{tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} in the model); "
            "use the config that was saved with these weights"
        )
    model.load_state_dict({k: sd[k].to(own[k].dtype) for k in own}, strict=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def load(spec: str, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Build the model of ``spec`` (name, run folder or weights file) and load its weights.
    Returns ``(model in eval mode on device, checked config)``."""
    cfg, weights = resolve_config(spec)
    model = registry.build_model(cfg, pretrained=weights is None)
    if weights is not None:
        load_weights(model, weights)
    else:
        log.warning("model %s has no trained weights: predictions will be meaningless", spec)
    return model.to(device).eval(), cfg


def load_model(spec: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """As :func:`load`, with the config as a dict (what a ``config.json`` holds)."""
    model, cfg = load(spec, device)
    return model, cfg.to_dict()
