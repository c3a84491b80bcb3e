"""Checkpoints: weights in safetensors plus JSON; nothing is ever unpickled.

A run folder holds ``config.json`` (the model config, see :mod:`glandseg.models.registry`,
plus the training arguments) and ``best.safetensors`` / ``last.safetensors`` (model
weights). The resumable state of a run (weights, optimizer, scheduler, RNG, history) is
committed once per epoch as a set by :mod:`glandseg.train.runstate`; this module turns
models and optimizers into tensors + JSON and back, with one-line errors for bad files.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from glandseg import GlandsegError
from glandseg.data.io import atomic_path, write_text

# loading a model and fitting weights to it belong to models (inference needs them)
from glandseg.models.store import (  # noqa: F401
    apply_weights,
    load_model,
    load_weights,
    resolve_model,
)

log = logging.getLogger(__name__)


def save_json(path: str | Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def load_json(path: str | Path, hint: str = "") -> dict:
    """Read a JSON object; a missing file, invalid JSON or a non-object is a one-line
    :class:`GlandsegError` naming ``path`` (plus ``hint``, the fix, when given)."""
    path = Path(path)
    fix = f"; {hint}" if hint else ""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GlandsegError(f"{path}: not found{fix}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GlandsegError(f"{path}: invalid JSON ({_one_line(exc)}){fix}") from exc
    except RecursionError as exc:
        raise GlandsegError(f"{path}: JSON nested too deeply to be a glandseg file{fix}") from exc
    except OSError as exc:
        raise GlandsegError(f"{path}: cannot read ({_one_line(exc)}){fix}") from exc
    if not isinstance(obj, dict):
        raise GlandsegError(f"{path}: expected a JSON object, got {type(obj).__name__}{fix}")
    return obj


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def weights_tensors(model: nn.Module, half: bool = False) -> dict[str, torch.Tensor]:
    """``model``'s state dict as contiguous CPU tensors (floating ones cast to fp16 when
    ``half``), ready for safetensors."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        sd[k] = v.contiguous()
    return sd


def json_metadata(metadata: dict | None) -> dict[str, str]:
    """safetensors metadata (str → str): each value JSON-encoded."""
    return {k: json.dumps(v, default=_json_default) for k, v in (metadata or {}).items()}


def save_weights(path: str | Path, model: nn.Module, half: bool = False,
                 metadata: dict | None = None) -> None:
    """Model weights → safetensors (optionally fp16 for floating tensors), atomically."""
    with atomic_path(path) as tmp:
        save_file(weights_tensors(model, half), str(tmp), metadata=json_metadata(metadata))


# --- resumable training state -------------------------------------------------------

def train_state(optimizer: torch.optim.Optimizer, scheduler, scaler,
                generator: torch.Generator | None = None
                ) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer, scheduler, AMP scaler and RNG states (plus ``generator``, the data
    loader's shuffling RNG, when given) → ``(tensors, meta)``: the tensors (optimizer
    moments, RNG states) for a safetensors file, everything else JSON-able."""
    osd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict] = {}
    for pid, st in osd["state"].items():
        state_meta[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                state_meta[str(pid)][k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if generator is not None:
        tensors["rng.loader"] = generator.get_state()
    np_state = np.random.get_state()
    meta = {
        "param_groups": osd["param_groups"],
        "state_meta": state_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "rng_python": _py_state(random.getstate()),
    }
    # a JSON round trip now, so that what is restored is exactly what a file would give
    return tensors, json.loads(json.dumps(meta, default=_json_default))


def _check_like(current: dict, saved: object, what: str) -> None:
    """``saved`` (a scheduler's or scaler's state from JSON) must have the keys of
    ``current`` (this run's own state) and numbers where it has numbers; ``ValueError``."""
    if not isinstance(saved, dict) or set(saved) != set(current):
        raise ValueError(f"the {what} state has other fields than this run's")
    for k, v in current.items():
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if number and (not isinstance(saved[k], int | float) or isinstance(saved[k], bool)):
            raise ValueError(f"the {what} state's {k!r} is not a number")


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Each restored state tensor (moments, momentum buffers) must have its parameter's
    shape (a step count: one value); ``ValueError`` otherwise (``load_state_dict`` does not
    check, and the first step would fail deep inside the optimizer)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, v in optimizer.state.get(param, {}).items():
                if not torch.is_tensor(v):
                    continue
                ok = v.numel() == 1 if name == "step" else v.shape == param.shape
                if not ok:
                    raise ValueError(f"optimizer state {name!r} has shape {tuple(v.shape)}, "
                                     f"its parameter {tuple(param.shape)}")


def _py_state(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def restore_train_state(tensors: dict[str, torch.Tensor], meta: dict,
                        optimizer: torch.optim.Optimizer | None, scheduler, scaler,
                        source: str | Path = "training state",
                        generator: torch.Generator | None = None) -> None:
    """Restore what :func:`train_state` returned: optimizer, scheduler and ``generator``
    only where given (and saved), the global RNG states always. A state that does not fit
    is a one-line error naming ``source``."""
    try:
        state: dict[int, dict] = {int(pid): dict(st) for pid, st in meta["state_meta"].items()}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        if optimizer is not None:
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
            _check_optimizer_shapes(optimizer)
        if scheduler is not None and meta["scheduler"] is not None:
            _check_like(scheduler.state_dict(), meta["scheduler"], "scheduler")
            scheduler.load_state_dict(meta["scheduler"])
        if scaler is not None and meta["scaler"] is not None:
            _check_like(scaler.state_dict(), meta["scaler"], "scaler")
            scaler.load_state_dict(meta["scaler"])
        torch.set_rng_state(tensors["rng.torch"])
        if generator is not None and "rng.loader" in tensors:
            generator.set_state(tensors["rng.loader"])
        ns = meta["rng_numpy"]
        np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
        ps = meta["rng_python"]
        random.setstate((ps[0], tuple(ps[1]), ps[2]))
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise GlandsegError(f"{source}: training state does not fit this run "
                            f"({type(exc).__name__}: {_one_line(exc)}); delete the run "
                            "folder (or choose another --out) and train without --resume"
                            ) from exc
