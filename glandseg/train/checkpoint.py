"""Checkpoints: weights in safetensors plus a JSON config; nothing is ever unpickled.

A run folder holds ``config.json`` (the model config, see :mod:`glandseg.models.registry`,
plus the training arguments), ``best.safetensors`` and ``last.safetensors`` (model weights),
``last_state.safetensors`` + ``last_state.json`` (optimizer, scheduler, RNG and history for
``--resume``). Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from glandseg import GlandsegError
from glandseg.data.io import atomic_path, write_text
from glandseg.models.store import load_model, resolve_model  # noqa: F401 (moved there)

log = logging.getLogger(__name__)


def save_json(path: str | Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def load_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GlandsegError(f"{path}: not found") from exc
    except json.JSONDecodeError as exc:
        raise GlandsegError(f"{path}: invalid JSON ({exc})") from exc


def save_weights(path: str | Path, model: nn.Module, half: bool = False,
                 metadata: dict | None = None) -> None:
    """Model weights → safetensors (optionally fp16 for floating tensors), atomically."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        sd[k] = v.contiguous()
    meta = {k: json.dumps(v, default=_json_default) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=meta)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model`` (fp16 files are cast to the model's dtypes)."""
    path = Path(path)
    if not path.is_file():
        raise GlandsegError(f"{path}: weights file not found")
    try:
        sd = load_file(str(path))
    except Exception as exc:
        raise GlandsegError(f"{path}: not a valid safetensors file ({exc})") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise GlandsegError(
            f"{path}: weights do not fit the model in its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise GlandsegError(
            f"{path}: weights do not fit the model in its config (shape of {k}: "
            f"{tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} in the model); "
            "use the config that was saved with these weights"
        )
    model.load_state_dict({k: sd[k].to(own[k].dtype) for k in own}, strict=True)


# --- resumable training state -------------------------------------------------------

def save_train_state(run: Path, optimizer: torch.optim.Optimizer, scheduler, scaler,
                     extra: dict) -> None:
    """Optimizer/scheduler/RNG state → ``last_state.safetensors`` + ``last_state.json``."""
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
    np_state = np.random.get_state()
    meta = {
        "param_groups": osd["param_groups"],
        "state_meta": state_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "rng_python": _py_state(random.getstate()),
        **extra,
    }
    with atomic_path(run / "last_state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    save_json(run / "last_state.json", meta)


def _py_state(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def load_train_state(run: Path, optimizer: torch.optim.Optimizer | None, scheduler, scaler) -> dict:
    """Restore what :func:`save_train_state` wrote (optimizer and scheduler only where given,
    RNG states always); returns the ``extra`` dict."""
    meta = load_json(run / "last_state.json")
    tensors = load_file(str(run / "last_state.safetensors"))
    state: dict[int, dict] = {}
    for pid, st in meta.pop("state_meta").items():
        state[int(pid)] = dict(st)
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    groups = meta.pop("param_groups")
    if optimizer is not None:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    sch = meta.pop("scheduler")
    if scheduler is not None and sch is not None:
        scheduler.load_state_dict(sch)
    sc = meta.pop("scaler")
    if scaler is not None and sc is not None:
        scaler.load_state_dict(sc)
    torch.set_rng_state(tensors["rng.torch"])
    ns = meta.pop("rng_numpy")
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
    ps = meta.pop("rng_python")
    random.setstate((ps[0], tuple(ps[1]), ps[2]))
    return meta
