"""One fingerprint of a network's weights, used by the grader, ``settings.json``, the slide
cache and the ONNX graphs: SHA-256 (hex) over every ``state_dict`` tensor, keys sorted,
each as its key, its shape and its values as float32 (integers as int64) bytes.

The same weights give the same fingerprint whether they are read from a safetensors file
(fp16 or fp32; :func:`file_fingerprint`, NumPy only, no torch) or from a loaded network
(:func:`model_fingerprint`, torch), so a grader fit with one is recognised with the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from glandseg import GlandsegError

__all__ = ["array_fingerprint", "config_fingerprint", "file_fingerprint", "model_fingerprint",
           "sha256_file"]


def array_fingerprint(items: Iterable[tuple[str, np.ndarray]]) -> str:
    """Fingerprint of ``(key, array)`` pairs (any order; see the module doc)."""
    h = hashlib.sha256()
    for k, v in sorted(items, key=lambda kv: kv[0]):
        a = np.asarray(v)
        a = a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a.astype(np.int64)
        h.update(k.encode())
        h.update(str(tuple(a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """Fingerprint of the tensors of a safetensors file (read with NumPy)."""
    from safetensors.numpy import load_file

    try:
        sd = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise GlandsegError(f"{path}: not a valid safetensors file ({exc})") from exc
    return array_fingerprint(sd.items())


def model_fingerprint(model) -> str:
    """Fingerprint of a torch network's weights as loaded (``state_dict``)."""
    import torch

    def arrays():
        for k, v in model.state_dict().items():
            t = v.detach().cpu()
            t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
            yield k, t.contiguous().numpy()

    return array_fingerprint(arrays())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def config_fingerprint(config: Mapping, weights: str) -> str:
    """SHA-256 (hex) of a model config (JSON, keys sorted) and its weights fingerprint
    (:func:`model_fingerprint`): the same network with other post-processing or tiling is
    another model for a cache of its outputs (the slide window cache)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(weights.encode())
    return h.hexdigest()
