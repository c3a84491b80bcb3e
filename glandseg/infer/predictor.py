"""The one inference engine used by the CLI, evaluation, training validation and tests.

``Predictor(model, config)`` turns an RGB image (``uint8 (H, W, 3)``) of any size into
class probabilities at the input resolution (``float32 (C, H, W)``) and an instance label
image (``int32 (H, W)``, 0 = background). Large images are cut into overlapping tiles at the
model's working scale and blended with a smooth window, so memory stays bounded by the tile
size plus the probability canvas.

Resolution: every model has one (``preprocess.mpp``, µm per pixel; GlaS 0.62005). An image
of another resolution (``mpp=`` of :meth:`Predictor.predict`, or the predictor's
``input_mpp``) is brought to the model's resolution (zoom ``input mpp / model mpp``; area
averaging when shrinking, bicubic when enlarging: :func:`resample`), the whole pipeline,
post-processing included (its areas are pixels at the model's resolution), runs there, and
the labels come back at the input's size by nearest neighbour (ids kept). Resolutions within 1 % of the model's are not
resampled. Optional stain normalisation (``stain_norm``: ``macenko`` or ``reinhard``,
:mod:`glandseg.data.stain`) maps the image's colours to the GlaS reference first.
"""

from __future__ import annotations

import logging
import math
import os
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
#: An input resolution within this relative difference of the model's is not resampled.
MPP_TOLERANCE = 0.01


def model_size(shape: tuple[int, int], zoom: float) -> tuple[int, int]:
    """``(H, W)`` of an input → its size at the model's resolution (``zoom`` = input µm/px
    over model µm/px), each side at least 1 px."""
    return max(1, round(shape[0] * zoom)), max(1, round(shape[1] * zoom))


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image ``(h, w)`` (integers, 0 = background) to
    ``shape = (H, W)``: pixel centres are mapped, ids are kept (never relabelled)."""
    labels = np.asarray(labels)
    h, w = labels.shape
    H, W = int(shape[0]), int(shape[1])
    if (h, w) == (H, W):
        return labels
    ri = np.minimum(((np.arange(H) + 0.5) * (h / H)).astype(np.int64), h - 1)
    ci = np.minimum(((np.arange(W) + 0.5) * (w / W)).astype(np.int64), w - 1)
    return labels[ri[:, None], ci[None, :]]


def resample(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bring a float image ``(C, H, W)`` to another resolution ``shape = (h, w)``: area
    averaging when shrinking (what a scanner's sensor does: a 0.31 µm/px scan averaged 2 x 2
    is a 0.62 µm/px one), bicubic when enlarging (values may overshoot: clamp them)."""
    shape = (int(shape[0]), int(shape[1]))
    if tuple(x.shape[-2:]) == shape:
        return x
    if shape[0] * shape[1] <= x.shape[-2] * x.shape[-1]:
        return F.interpolate(x[None], size=shape, mode="area")[0]
    return F.interpolate(x[None], size=shape, mode="bicubic", align_corners=False)[0]


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``uint8 (H, W, 3)`` → ``uint8 (*shape, 3)`` (:func:`resample`)."""
    if tuple(image.shape[:2]) == tuple(shape):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    x = resample(x, shape)
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def check_mpp(mpp: object, what: str = "mpp") -> float:
    """A resolution in µm per pixel: a finite number > 0 (else :class:`GlandsegError`)."""
    ok = isinstance(mpp, int | float) and not isinstance(mpp, bool)
    if not (ok and math.isfinite(float(mpp)) and float(mpp) > 0):
        raise GlandsegError(f"{what} must be a positive number of micrometres per pixel, "
                            f"got {mpp!r}; e.g. 0.25 for a 40x scan, 0.5 for 20x")
    return float(mpp)


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
    (:class:`TileConfig`, default: the config's), ``input_mpp`` (µm/px of the images given
    without ``mpp=``; ``None``: the model's, no rescaling), ``stain_norm`` (``None``,
    ``"macenko"`` or ``"reinhard"``), ``deblur`` (``None``/``"off"``, the default here, or
    ``"auto"``, the CLI's default: sharpen images measurably blurrier than the GlaS training
    images, :mod:`glandseg.data.blur`).

    Attributes: ``model_config`` (the checked :class:`ModelConfig`), ``config`` (its dict),
    ``task``, ``scale``, ``mpp`` (the model's µm/px), ``mean``/``std``
    (``float32 (3, 1, 1)``), ``tiling``, ``stride``, ``input_mpp``, ``stain_norm``, ``deblur``, ``last_extra_blur``
    (px beyond the reference measured on the last image, when ``deblur`` is on) and
    ``last_sharpened`` (whether that image was sharpened).
    """

    def __init__(self, model: nn.Module, config: ModelConfig | dict,
                 device: str | torch.device = "cpu", tta: bool = False,
                 tiling: TileConfig | None = None, input_mpp: float | None = None,
                 stain_norm: str | None = None, deblur: str | None = None) -> None:
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
        self.mpp = mc.mpp
        self.input_mpp = None if input_mpp is None else check_mpp(input_mpp, "input_mpp")
        self._normalizer = None
        self.stain_norm = stain_norm
        self.deblur = deblur
        self.last_extra_blur: float | None = None
        self.last_sharpened = False
        self._assumed_logged = False

    @property
    def stain_norm(self) -> str | None:
        """``None``, ``"macenko"`` or ``"reinhard"``: stain normalisation before prediction."""
        return None if self._normalizer is None else self._normalizer.method

    @stain_norm.setter
    def stain_norm(self, method: str | None) -> None:
        if method is None:
            self._normalizer = None
            return
        from glandseg.data.stain import StainNormalizer

        self._normalizer = StainNormalizer(method)

    @property
    def deblur(self) -> str | None:
        """``None`` or ``"auto"``: sharpen blurred images at the model's resolution (dense
        models; always ``None`` for an instance model)."""
        return None if self._deblurrer is None else "auto"

    @deblur.setter
    def deblur(self, mode: str | None) -> None:
        if mode in (None, "off"):
            self._deblurrer = None
            return
        if mode != "auto":
            raise GlandsegError(f"deblur must be 'auto' or 'off', got {mode!r}")
        if self.task == "instances":  # Mask R-CNN reads the image itself: no effect
            self._deblurrer = None
            return
        from glandseg.data.blur import Deblur

        self._deblurrer = Deblur()

    # -- resolution -----------------------------------------------------------------
    def zoom(self, mpp: float | None = None) -> float:
        """Input px per model px for an image of ``mpp`` µm/px (default ``input_mpp``;
        ``None`` for both: 1). Within :data:`MPP_TOLERANCE` of the model's: exactly 1."""
        m = self.input_mpp if mpp is None else check_mpp(mpp)
        if m is None:
            return 1.0
        z = m / self.mpp
        return 1.0 if abs(z - 1.0) <= MPP_TOLERANCE else z

    def resolution_of(self, path: str | os.PathLike, mpp: float | None = None) -> float:
        """The µm/px of the image file ``path``: ``mpp`` if given, else ``input_mpp``, else
        its metadata (:func:`glandseg.data.io.read_mpp`), else the model's, which is then
        logged (once per predictor) as an assumption."""
        if mpp is not None:
            return check_mpp(mpp)
        if self.input_mpp is not None:
            return self.input_mpp
        from glandseg.data.io import read_mpp

        found, source = read_mpp(path)
        if found is not None:
            log.info("%s: %.4g µm/px (from %s)", path, found, source)
            return found
        if not self._assumed_logged:
            self._assumed_logged = True
            log.warning("%s: resolution unknown (%s): assuming the model's %.4g µm/px "
                        "(GlaS: 20x); for other scans pass --input-mpp (e.g. 0.25 for 40x). "
                        "Said once for all images of unknown resolution.",
                        path, source, self.mpp)
        else:
            log.debug("%s: resolution unknown (%s): assuming %.4g µm/px", path, source,
                      self.mpp)
        return self.mpp

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """Stain-normalise ``uint8 (H, W, 3)`` if asked (else the image itself)."""
        return image if self._normalizer is None else self._normalizer(image)

    @classmethod
    def from_name(cls, spec: str, device: str | torch.device = "auto", **kw) -> Predictor:
        """Load a bundled model, architecture name, run folder or ``.safetensors`` file."""
        from glandseg.models.store import load

        dev = pick_device(device)
        model, cfg = load(spec, dev)
        return cls(model, cfg, dev, **kw)

    # -- dense models ---------------------------------------------------------------
    def _to_tensor(self, image: np.ndarray, zoom: float = 1.0) -> torch.Tensor:
        """``uint8 (H, W, 3)`` → normalised ``float32 (3, h, w)`` at the working scale:
        first brought to the model's resolution (``zoom``, :func:`resample`), then resized
        by the working scale (bilinear, antialiased, as in training)."""
        scale = self.scale
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        if zoom != 1.0:
            x = resample(x, model_size(image.shape[:2], zoom)).clamp(0, 1)
        if self._deblurrer is not None:
            x = self._deblur(x)
        if scale != 1.0:
            h, w = x.shape[-2:]
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True,
                              align_corners=False)[0]
        return (x - self.mean) / self.std

    def _deblur(self, x: torch.Tensor) -> torch.Tensor:
        """Sharpen ``float32 (3, h, w)`` in [0, 1] at the model's resolution if it is
        blurrier than the reference (:class:`glandseg.data.blur.Deblur`)."""
        hwc = x.permute(1, 2, 0).numpy()
        out, extra = self._deblurrer(hwc)
        self.last_extra_blur, self.last_sharpened = extra, out is not hwc
        if out is hwc:
            log.debug("deblur: %.2f px of extra blur, below the threshold: unchanged", extra)
            return x
        log.info("deblur: image blurrier than the model's training images by %.2f px "
                 "(Gaussian sigma): sharpened", extra)
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)

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

    def predict_proba(self, image: np.ndarray, mpp: float | None = None) -> np.ndarray:
        """``uint8 (H, W, 3)`` → ``float32 (C, H, W)`` probabilities at the input resolution.
        ``mpp``: the image's µm/px (default ``input_mpp``, else the model's)."""
        if self.task == "instances":
            raise ValueError("an instance model gives labels, not probability maps: use predict()")
        H, W = image.shape[:2]
        return self._dense(self._prepare(image), self.zoom(mpp), (H, W)).numpy()

    def _dense(self, image: np.ndarray, zoom: float, out: tuple[int, int]) -> torch.Tensor:
        """Probabilities ``float32 (C, *out)`` of ``image`` (already stain-normalised) seen
        at ``zoom`` x its resolution (the model's), resampled to ``out`` (bilinear)."""
        x = self._to_tensor(image, zoom)
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
                out_b = self._forward(batch)
                if probs is None:
                    probs = torch.zeros(out_b.shape[1], h, w)
                for (y, xx), p in zip(chunk, out_b, strict=True):
                    probs[:, y:y + th, xx:xx + tw] += p * win
                    norm[y:y + th, xx:xx + tw] += win
            probs /= norm.clamp(min=1e-6)
        if (h, w) != tuple(out):
            probs = F.interpolate(probs[None], size=tuple(out), mode="bilinear",
                                  align_corners=False)[0]
        return probs.float()

    # -- all models -----------------------------------------------------------------
    def postprocess(self, probs: np.ndarray, params: Mapping | None = None) -> np.ndarray:
        """Probabilities ``float32 (C, H, W)`` → labels ``int32 (H, W)`` (0 = background)
        with the config's thresholds, ``params`` (some of them; checked, an unknown key is
        an error) replacing those it names."""
        post = self.model_config.postprocess
        if params:
            post = post.updated(params)
        return probs_to_labels(probs, self.task, post)

    def predict(self, image: np.ndarray, mpp: float | None = None) -> np.ndarray:
        """``uint8 (H, W, 3)`` → instance labels ``int32 (H, W)``, 0 = background.

        ``mpp``: the image's µm/px (default ``input_mpp``, else the model's): the image is
        segmented at the model's resolution and the labels resized back (module doc)."""
        return self.predict_with_proba(image, mpp, proba=False)[0]

    def predict_with_proba(self, image: np.ndarray, mpp: float | None = None,
                           proba: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """``(labels int32 (H, W), probabilities float32 (C, H, W) or None)`` of one image at
        its own resolution ``mpp`` (see :meth:`predict`); the probabilities (dense models,
        ``proba=True``) are those the labels were post-processed from, resampled to the
        input. Instance models give ``None``."""
        H, W = image.shape[:2]
        zoom = self.zoom(mpp)
        image = self._prepare(image)
        size = model_size((H, W), zoom) if zoom != 1.0 else (H, W)
        if self.task == "instances":
            from glandseg.infer.instances import predict_instances

            labels = predict_instances(self, resize_image(image, size))
            return resize_labels(labels, (H, W)), None
        probs = self._dense(image, zoom, size)
        labels = resize_labels(self.postprocess(probs.numpy()), (H, W))
        if not proba:
            return labels, None
        if size != (H, W):
            probs = F.interpolate(probs[None], size=(H, W), mode="bilinear",
                                  align_corners=False)[0]
        return labels, probs.numpy()

    __call__ = predict
