"""The one inference engine used by the CLI, evaluation, training validation and tests.

``Predictor(model, config)`` turns an RGB image (``uint8 (H, W, 3)``) of any size into
class probabilities at the input resolution (``float32 (C, H, W)``) and an instance label
image (``int32 (H, W)``, 0 = background). Large images are cut into overlapping tiles at the
model's working scale and blended with a smooth window, so memory stays bounded by the tile
size plus the probability canvas.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glandseg import GlandsegError
from glandseg.infer.postprocess import probs_to_labels
from glandseg.models.config import ModelConfig, Tiling

log = logging.getLogger(__name__)

#: Tiling settings (pixels at the model's working scale), checked on construction.
TileConfig = Tiling


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA if available, else MPS, else CPU. Asking for ``cuda`` or ``mps`` on a
    machine without it is a one-line :class:`GlandsegError`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise GlandsegError(f"device {device!r}: not a device name; use auto, cpu, cuda "
                            "or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GlandsegError(f"device {device!r}: CUDA is not available on this machine "
                            f"(torch {torch.__version__}); use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GlandsegError(f"device {device!r}: only {torch.cuda.device_count()} CUDA "
                            "device(s) here; use --device cuda or auto")
    if dev.type == "mps" and not _mps_available():
        raise GlandsegError(f"device {device!r}: MPS is not available on this machine; use "
                            "--device cpu or auto")
    return dev


def _window(h: int, w: int, overlap: int) -> torch.Tensor:
    """Blending weights ``(h, w)``: 1 in the middle, a cosine ramp over ``overlap`` px."""
    def ramp(n: int) -> torch.Tensor:
        r = torch.ones(n)
        k = min(overlap, n // 2)
        if k > 0:
            t = (torch.arange(k, dtype=torch.float32) + 0.5) / k
            r[:k] = 0.5 - 0.5 * torch.cos(torch.pi * t)
            r[n - k:] = r[:k].flip(0)
        return r
    return ramp(h)[:, None] * ramp(w)[None, :]


def _starts(n: int, tile: int, step: int) -> list[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(s))


class Predictor:
    """Segment images with a dense model (``task`` ``contour`` or ``binary``) or an instance
    model (``task`` ``instances``, Mask R-CNN).

    Parameters: ``model`` (eval mode), ``config`` (a :class:`ModelConfig`, or a config dict:
    checked, and the ``model`` key may then be missing or name a network built elsewhere),
    ``device``, ``tta`` (average over horizontal/vertical flips), ``tiling``
    (:class:`TileConfig`, default: the config's).

    Attributes: ``model_config`` (the checked :class:`ModelConfig`), ``config`` (its dict),
    ``task``, ``scale``, ``mean``/``std`` (``float32 (3, 1, 1)``), ``tiling``, ``stride``.
    """

    def __init__(self, model: nn.Module, config: ModelConfig | dict,
                 device: str | torch.device = "cpu", tta: bool = False,
                 tiling: TileConfig | None = None) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        mc = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(
            config, require_model=False)
        self.model_config = mc
        self.config = mc.to_dict()
        self.task = mc.task
        self.scale = mc.preprocess.scale
        self.mean = torch.tensor(mc.preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(mc.preprocess.std, dtype=torch.float32).view(3, 1, 1)
        self.tta = tta
        self.tiling = tiling or mc.tiling
        self.stride = int(getattr(model, "stride", 32))

    @classmethod
    def from_name(cls, spec: str, device: str | torch.device = "auto", **kw) -> Predictor:
        """Load a bundled model, architecture name, run folder or ``.safetensors`` file."""
        from glandseg.models.store import load

        dev = pick_device(device)
        model, cfg = load(spec, dev)
        return cls(model, cfg, dev, **kw)

    # -- dense models ---------------------------------------------------------------
    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        if self.scale != 1.0:
            h, w = x.shape[-2:]
            size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
            x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True,
                              align_corners=False)[0]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, C, h, w)`` for a normalised batch; pads to the model stride."""
        h, w = batch.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        x = F.pad(batch, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        x = x.to(self.device)
        flips = [(), (3,), (2,), (2, 3)] if self.tta else [()]
        acc = None
        for dims in flips:
            xi = x.flip(dims) if dims else x
            logits = self.model(xi)
            logits = logits.flip(dims) if dims else logits
            p = torch.sigmoid(logits) if self.task == "binary" else torch.softmax(logits, dim=1)
            acc = p if acc is None else acc + p
        return (acc / len(flips))[..., :h, :w].float().cpu()

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """``uint8 (H, W, 3)`` → ``float32 (C, H, W)`` probabilities at the input resolution."""
        if self.task == "instances":
            raise ValueError("an instance model gives labels, not probability maps: use predict()")
        H, W = image.shape[:2]
        x = self._to_tensor(image)
        h, w = x.shape[-2:]
        t = self.tiling
        if h <= t.tile and w <= t.tile:
            probs = self._forward(x[None])[0]
        else:
            th, tw = min(t.tile, h), min(t.tile, w)
            step = max(1, t.tile - t.overlap)
            coords = [(y, xx) for y in _starts(h, th, step) for xx in _starts(w, tw, step)]
            win = _window(th, tw, t.overlap)
            probs = None
            norm = torch.zeros(h, w)
            for i in range(0, len(coords), t.batch_size):
                chunk = coords[i:i + t.batch_size]
                batch = torch.stack([x[:, y:y + th, xx:xx + tw] for y, xx in chunk])
                out = self._forward(batch)
                if probs is None:
                    probs = torch.zeros(out.shape[1], h, w)
                for (y, xx), p in zip(chunk, out, strict=True):
                    probs[:, y:y + th, xx:xx + tw] += p * win
                    norm[y:y + th, xx:xx + tw] += win
            probs /= norm.clamp(min=1e-6)
        if (h, w) != (H, W):
            probs = F.interpolate(probs[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        return probs.numpy().astype(np.float32)

    # -- all models -----------------------------------------------------------------
    def postprocess(self, probs: np.ndarray, params: Mapping | None = None) -> np.ndarray:
        """Probabilities ``float32 (C, H, W)`` → labels ``int32 (H, W)`` (0 = background)
        with the config's thresholds, ``params`` (some of them; checked, an unknown key is
        an error) replacing those it names."""
        post = self.model_config.postprocess
        if params:
            post = post.updated(params)
        return probs_to_labels(probs, self.task, post)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``uint8 (H, W, 3)`` → instance labels ``int32 (H, W)``, 0 = background."""
        if self.task == "instances":
            from glandseg.infer.instances import predict_instances

            return predict_instances(self, image)
        return self.postprocess(self.predict_proba(image))

    __call__ = predict
