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
from pathlib import Path

import numpy as np

from glandseg import GlandsegError
from glandseg.data.resample import interpolate, resample, resize_image
from glandseg.infer.backend import OnnxBackend, TorchBackend, open_backend, pick_device
from glandseg.infer.postprocess import probs_to_labels
from glandseg.models.config import ModelConfig, Tiling

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_SIDE", "MPP_TOLERANCE", "Predictor", "export_int8", "TileConfig", "check_mpp", "model_size", "pad_to_stride", "pick_device",
           "resample", "resize_image", "resize_labels"]

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


def check_mpp(mpp: object, what: str = "mpp") -> float:
    """A resolution in µm per pixel: a finite number > 0 (else :class:`GlandsegError`)."""
    ok = isinstance(mpp, int | float) and not isinstance(mpp, bool)
    if not (ok and math.isfinite(float(mpp)) and float(mpp) > 0):
        raise GlandsegError(f"{what} must be a positive number of micrometres per pixel, "
                            f"got {mpp!r}; e.g. 0.25 for a 40x scan, 0.5 for 20x")
    return float(mpp)


def _window(h: int, w: int, overlap: int) -> np.ndarray:
    """Blending weights ``float32 (h, w)``: 1 in the middle, a cosine ramp over ``overlap`` px."""
    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            t = (np.arange(k, dtype=np.float32) + np.float32(0.5)) / np.float32(k)
            r[:k] = np.float32(0.5) - np.float32(0.5) * np.cos(np.float32(np.pi) * t)
            r[n - k:] = r[:k][::-1]
        return r
    return ramp(h)[:, None] * ramp(w)[None, :]


def _starts(n: int, tile: int, step: int) -> list[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(s))


def _softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def pad_to_stride(x: np.ndarray, stride: int, fallback: str) -> np.ndarray:
    """Pad ``(B, C, h, w)`` at the bottom/right to multiples of ``stride``: reflect where the
    image is large enough, else ``fallback`` (``constant`` zeros or ``edge``)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if not (ph or pw):
        return x
    mode = "reflect" if min(h, w) > max(ph, pw) else fallback
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


class Predictor:
    """Segment images with a dense model (``task`` ``contour`` or ``binary``) or an instance
    model (``task`` ``instances``, Mask R-CNN).

    Parameters: ``model`` (a torch network in eval mode, or a backend of
    :mod:`glandseg.infer.backend`: :class:`~glandseg.infer.backend.OnnxBackend`), ``config`` (a :class:`ModelConfig`, or a config dict:
    checked, and the ``model`` key may then be missing or name a network built elsewhere),
    ``device``, ``tta`` (average over horizontal/vertical flips), ``tiling``
    (:class:`TileConfig`, default: the config's), ``input_mpp`` (µm/px of the images given
    without ``mpp=``; ``None``: the model's, no rescaling), ``stain_norm`` (``None``,
    ``"macenko"`` or ``"reinhard"``), ``deblur`` (``None``/``"off"``, the default here, or
    ``"auto"``, the CLI's default: sharpen images measurably blurrier than the GlaS training
    images, :mod:`glandseg.data.blur`).

    Attributes: ``backend`` (``.name`` ``"onnx"`` or ``"torch"``), ``model`` (the torch network;
    ``None`` on the ONNX backend), ``fingerprint`` (of the weights), ``model_config`` (the checked :class:`ModelConfig`), ``config`` (its dict),
    ``task``, ``scale``, ``mpp`` (the model's µm/px), ``mean``/``std``
    (``float32 (3, 1, 1)``), ``tiling``, ``stride``, ``input_mpp``, ``stain_norm``, ``deblur``, ``last_extra_blur``
    (px beyond the reference measured on the last image, when ``deblur`` is on) and
    ``last_sharpened`` (whether that image was sharpened).
    """

    def __init__(self, model, config: ModelConfig | dict, device="cpu", tta: bool = False,
                 tiling: TileConfig | None = None, input_mpp: float | None = None,
                 stain_norm: str | None = None, deblur: str | None = None) -> None:
        if isinstance(model, OnnxBackend | TorchBackend):
            self.backend = model
        else:
            self.backend = TorchBackend(model, device)
        self.device = self.backend.device
        self.model = self.backend.model
        mc = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(
            config, require_model=False)
        self.model_config = mc
        self.config = mc.to_dict()
        self.task = mc.task
        self.scale = mc.preprocess.scale
        self.mean = np.asarray(mc.preprocess.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(mc.preprocess.std, dtype=np.float32).reshape(3, 1, 1)
        self.tta = tta
        self.tiling = tiling or mc.tiling
        self.stride = self.backend.stride
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

    @property
    def fingerprint(self) -> str:
        """:mod:`glandseg.models.fingerprint` of the network's weights."""
        return self.backend.fingerprint

    @classmethod
    def from_name(cls, spec: str, device="auto", backend: str = "auto",
                  threads: int | None = None, precision: str = "fp32", **kw) -> Predictor:
        """Load a bundled model, architecture name, run folder or ``.safetensors`` file.

        ``backend``: ``auto`` (torch on a CUDA/MPS device, ONNX Runtime on the CPU where
        installed, else torch), ``onnx`` or ``torch`` (:mod:`glandseg.infer.backend`);
        ``threads``: CPU threads of the network (default: all cores); ``precision``:
        ``fp32`` or ``int8`` (ONNX Runtime's int8 graph, :mod:`glandseg.models.quantize`)."""
        be, cfg = open_backend(spec, backend=backend, device=device, threads=threads,
                               precision=precision)
        return cls(be, cfg, **kw)

    # -- dense models ---------------------------------------------------------------
    def _to_tensor(self, image: np.ndarray, zoom: float = 1.0) -> np.ndarray:
        """``uint8 (H, W, 3)`` → normalised ``float32 (3, h, w)`` at the working scale:
        first brought to the model's resolution (``zoom``, :func:`resample`), then resized
        by the working scale (bilinear, antialiased, as in training)."""
        scale = self.scale
        x = np.ascontiguousarray(image).transpose(2, 0, 1).astype(np.float32)
        x /= np.float32(255.0)
        if zoom != 1.0:
            x = np.clip(resample(x, model_size(image.shape[:2], zoom)), 0, 1)
        if self._deblurrer is not None:
            x = self._deblur(x)
        if scale != 1.0:
            h, w = x.shape[-2:]
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = interpolate(x, size, "bilinear-aa")
        x -= self.mean  # in place (x is this call's own array): the values of (x - mean) / std
        x /= self.std
        return x

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """``uint8 (H, W, 3)`` → ``float32 (3, h, w)``: the model's pre-processing (working
        scale, mean, std) without resampling, deblur or stain normalisation."""
        x = np.ascontiguousarray(image).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        if self.scale != 1.0:
            h, w = x.shape[-2:]
            size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
            x = interpolate(x, size, "bilinear-aa")
        return (x - self.mean) / self.std

    def _deblur(self, x: np.ndarray) -> np.ndarray:
        """Sharpen ``float32 (3, h, w)`` in [0, 1] at the model's resolution if it is
        blurrier than the reference (:class:`glandseg.data.blur.Deblur`)."""
        hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
        out, extra = self._deblurrer(hwc)
        self.last_extra_blur, self.last_sharpened = extra, out is not hwc
        if out is hwc:
            log.debug("deblur: %.2f px of extra blur, below the threshold: unchanged", extra)
            return x
        log.info("deblur: image blurrier than the model's training images by %.2f px "
                 "(Gaussian sigma): sharpened", extra)
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32).transpose(2, 0, 1))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``float32 (B, C, h, w)`` for a normalised batch ``(B, 3, h, w)``;
        pads to the model stride (reflect, or zeros for a tiny image)."""
        h, w = batch.shape[-2:]
        x = pad_to_stride(np.asarray(batch, dtype=np.float32), self.stride, "constant")
        flips = [(), (3,), (2,), (2, 3)] if self.tta else [()]
        acc = None
        for dims in flips:
            xi = np.ascontiguousarray(np.flip(x, dims)) if dims else x
            logits = self.backend.run(xi)
            logits = np.flip(logits, dims) if dims else logits
            if self.task == "binary":
                p = 1.0 / (1.0 + np.exp(-logits))
            else:
                p = _softmax(logits, axis=1)
            acc = p if acc is None else acc + p
        if len(flips) > 1:
            acc = acc / np.float32(len(flips))
        return np.ascontiguousarray(acc[..., :h, :w], dtype=np.float32)

    def predict_proba(self, image: np.ndarray, mpp: float | None = None) -> np.ndarray:
        """``uint8 (H, W, 3)`` → ``float32 (C, H, W)`` probabilities at the input resolution.
        ``mpp``: the image's µm/px (default ``input_mpp``, else the model's)."""
        if self.task == "instances":
            raise ValueError("an instance model gives labels, not probability maps: use predict()")
        H, W = image.shape[:2]
        return self._dense(self._prepare(image), self.zoom(mpp), (H, W))

    def _dense(self, image: np.ndarray, zoom: float, out: tuple[int, int]) -> np.ndarray:
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
            norm = np.zeros((h, w), np.float32)
            for i in range(0, len(coords), t.batch_size):
                chunk = coords[i:i + t.batch_size]
                batch = np.stack([x[:, y:y + th, xx:xx + tw] for y, xx in chunk])
                out_b = self._forward(batch)
                if probs is None:
                    probs = np.zeros((out_b.shape[1], h, w), np.float32)
                for (y, xx), p in zip(chunk, out_b, strict=True):
                    probs[:, y:y + th, xx:xx + tw] += p * win
                    norm[y:y + th, xx:xx + tw] += win
            probs /= np.maximum(norm, np.float32(1e-6))
        if (h, w) != tuple(out):
            probs = interpolate(probs, tuple(out), "bilinear")
        return probs

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
        labels = resize_labels(self.postprocess(probs), (H, W))
        if not proba:
            return labels, None
        if size != (H, W):
            probs = interpolate(probs, (H, W), "bilinear")
        return labels, probs

    __call__ = predict


#: Calibration images are cut to at most this side (px at the model's scale), centred.
CALIBRATION_SIDE = 1024


def export_int8(spec: str, images, dest: str | os.PathLike | None = None,
                source: str = "") -> str:
    """Make the int8 graph of model ``spec`` (:mod:`glandseg.models.quantize`), calibrated
    on ``images`` (paths of H&E images like the ones to segment; each brought to the model's
    resolution and pre-processing, a centred crop of at most :data:`CALIBRATION_SIDE` px).
    ``dest``: where (default: beside the fp32 graph, ``X.int8.onnx``); ``source``: what the
    images are (recorded in the graph). Returns the path written."""
    from glandseg.data.io import read_image
    from glandseg.models.quantize import int8_path, quantize_int8

    pred = Predictor.from_name(spec, backend="onnx", deblur=None)
    stride = pred.backend.stride

    def batches():
        for path in images:
            image = read_image(path)
            x = pred._to_tensor(image, pred.zoom(pred.resolution_of(path)))
            h, w = x.shape[-2:]
            ch, cw = min(h, CALIBRATION_SIDE), min(w, CALIBRATION_SIDE)
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            yield pad_to_stride(x[None, :, y0:y0 + ch, x0:x0 + cw], stride, "edge")

    images = list(images)
    out = Path(dest) if dest is not None else int8_path(pred.backend.path)
    return str(quantize_int8(pred.backend.path, out, batches(),
                             source or f"{len(images)} image(s)"))
