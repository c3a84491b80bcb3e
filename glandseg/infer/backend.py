"""Network backends of the :class:`~glandseg.infer.predictor.Predictor`: who runs the network.

Everything around the network (resampling, deblur, stain normalisation, tiling, blending,
TTA flips, softmax, post-processing) is NumPy and shared, so both backends give the same
glands; only ``run`` differs:

- :class:`OnnxBackend`: ONNX Runtime on the CPU (the default there: 3.6-5x faster than
  torch on a 2-core machine, and no torch import). The graph is ``NAME.onnx`` beside the
  weights (:mod:`glandseg.models.onnx_export`); bundled models ship theirs; a run folder's is
  made on first use where torch is installed (``glandseg export-onnx RUN``).
- :class:`TorchBackend`: the torch network itself (CUDA, MPS, training-time validation, Mask
  R-CNN, or ``--backend torch``).

``run(x)``: ``float32 (B, 3, h, w)`` normalised, ``h`` and ``w`` multiples of ``stride`` →
``float32 (B, C, h, w)`` logits. ``encoder_means(x)``: each encoder stage's feature map
averaged over the image, ``[float32 (B, C_s)]`` (the grader's features).
``fingerprint``: :mod:`glandseg.models.fingerprint` of the weights.

:func:`open_backend` picks and opens one for a model spec (``auto``: torch where a CUDA or MPS
device is present, ONNX Runtime on the CPU where it is installed, else torch).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import sys
from pathlib import Path

import numpy as np

from glandseg import GlandsegError
from glandseg.models.config import ModelConfig
from glandseg.models.fingerprint import sha256_file
from glandseg.models.quantize import int8_path
from glandseg.models.store import resolve_config

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "PRECISIONS", "OnnxBackend", "TorchBackend", "choose_backend", "cache_dir",
           "ensure_onnx", "int8_unsupported", "open_backend", "pick_device", "torch_missing"]

BACKENDS = ("auto", "onnx", "torch")
#: ``--precision`` of the ONNX graph: fp32 (the default; same glands as torch) or int8.
PRECISIONS = ("fp32", "int8")
TRAIN_EXTRA = "pip install 'glandseg[train]'"


def torch_missing(what: str) -> GlandsegError:
    """The one-line error of a core install asked for something that needs torch."""
    return GlandsegError(f"{what} needs torch, which this install of glandseg lacks: "
                         f"{TRAIN_EXTRA}")


def _have(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # blocked, or a stub in sys.modules
        return False


#: x86 CPU flags (``/proc/cpuinfo`` spelling) of the int8 dot-product instructions with
#: which ONNX Runtime's int8 convolutions accumulate in 32 bits.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8"})
#: Set to 1 to run ``--precision int8`` on a CPU that :func:`int8_unsupported` refuses
#: (where its detection is wrong; the glands may be wrong where it is right).
INT8_ANY_CPU_ENV = "GLANDSEG_INT8_ANY_CPU"


def _x86_flags() -> set[str]:
    """The CPU's instruction-set flags, lower case: NumPy's run-time detection (every
    platform) and, on Linux, ``/proc/cpuinfo`` (which also names AVX-VNNI and AMX)."""
    flags: set[str] = set()
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        except ImportError:
            feats = {}
    flags |= {k.lower() for k, v in feats.items() if v}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags |= set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return flags


def int8_unsupported() -> str | None:
    """Why the int8 graph would give wrong glands on this CPU, or ``None`` where it runs.

    On x86 CPUs without int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX: e.g.
    AVX2-only AMD EPYC before Zen 4, Intel before Cascade Lake/Alder Lake) ONNX Runtime's
    int8 convolutions sum pairs of uint8 x int8 products in 16 bits, which saturate: on such
    a CPU (AMD EPYC, AVX2) the bundled ``glas-unet`` int8 graph's probabilities differed from
    fp32's by 0.33 on average and its pooled F1 on the validation patients fell from 0.862 to
    0.749. Other architectures (ARM) are not refused (not measured by us). The environment
    variable :data:`INT8_ANY_CPU_ENV` = 1 skips the check."""
    if os.environ.get(INT8_ANY_CPU_ENV) == "1":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return None
    if _x86_flags() & INT8_DOT_FLAGS:
        return None
    return ("--precision int8 needs a CPU with int8 dot-product instructions (AVX-512 VNNI, "
            "AVX-VNNI or AMX); on this one ONNX Runtime's int8 convolutions saturate and the "
            "glands would be wrong: use --precision fp32 (the default)")


def _gpu_likely() -> bool:
    """Whether a CUDA or MPS device is probably present, decided without importing torch
    (which costs seconds): torch installed and an NVIDIA driver loaded, or Apple silicon."""
    if not _have("torch"):
        return False
    if os.path.exists("/proc/driver/nvidia/version"):
        return True
    return sys.platform == "darwin" and platform.machine() == "arm64"


def pick_device(device="auto"):
    """``auto`` → CUDA if available, else MPS, else CPU (a ``torch.device``). Asking for
    ``cuda`` or ``mps`` on a machine without it is a one-line :class:`GlandsegError`."""
    try:
        import torch
    except ImportError as exc:
        raise torch_missing(f"device {device!r} (the torch backend)") from exc
    if isinstance(device, torch.device):
        return device
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps else torch.device("cpu")
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
    if dev.type == "mps" and not mps:
        raise GlandsegError(f"device {device!r}: MPS is not available on this machine; use "
                            "--device cpu or auto")
    return dev


class TorchBackend:
    """Runs a torch network (``nn.Module``) on ``device``; ``threads``: torch CPU threads."""

    name = "torch"

    def __init__(self, model, device="cpu", threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.stride = int(getattr(model, "stride", 32))

    def set_threads(self, threads: int) -> None:
        """Use ``threads`` CPU threads from now on."""
        import torch

        torch.set_num_threads(int(threads))

    @property
    def fingerprint(self) -> str:
        from glandseg.models.fingerprint import model_fingerprint

        return model_fingerprint(self.model)

    @property
    def has_encoder(self) -> bool:
        enc = getattr(self.model, "encoder", None)
        return enc is not None and hasattr(enc, "feature_info")

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            return self.model(t).float().cpu().numpy()

    def encoder_means(self, x: np.ndarray) -> list[np.ndarray]:
        import torch

        if not self.has_encoder:
            raise ValueError("this model has no feature-pyramid encoder to pool")
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            return [f.float().mean(dim=(2, 3)).cpu().numpy() for f in self.model.encoder(t)]


class OnnxBackend:
    """Runs an exported graph (:mod:`glandseg.models.onnx_export`) with ONNX Runtime on the
    CPU; ``threads``: intra-op threads (``None``: ONNX Runtime's default, all physical cores).
    The encoder means of the last ``run`` are kept, so the grader's features of an image
    just segmented in one piece cost nothing more."""

    name = "onnx"
    model = None  # no torch network

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = threads
        self.session = self._open()
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.stride = int(self.meta.get("stride", 32))
        self.fingerprint = self.meta.get("fingerprint", "")
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.device = "cpu"
        self._last: tuple[np.ndarray, list[np.ndarray]] | None = None

    def _open(self):
        """A new ONNX Runtime session of the graph with ``self.threads`` intra-op threads."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise GlandsegError("--backend onnx needs ONNX Runtime: pip install onnxruntime "
                                "(or use --backend torch)") from exc
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error types
            raise GlandsegError(f"{self.path}: not a valid ONNX graph ({' '.join(str(exc).split())[:200]}); "
                                "delete it and run `glandseg export-onnx` again") from exc

    def close(self) -> None:
        """Drop the session and its threads (before forking worker processes: each opens
        its own on its first ``run``)."""
        self.session = None
        self._last = None

    @property
    def has_encoder(self) -> bool:
        return len(self.outputs) > 1

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"int8"`` (:mod:`glandseg.models.quantize`)."""
        return self.meta.get("precision", "fp32")

    def set_threads(self, threads: int) -> None:
        """Use ``threads`` CPU threads from now on (a new session, opened when next run)."""
        if int(threads) != self.threads:
            self.threads = int(threads)
            if self.session is not None:
                self.session = self._open()

    def __getstate__(self) -> dict:  # a session cannot be pickled: workers open their own
        state = dict(self.__dict__)
        state.update(session=None, _last=None)
        return state

    def __setstate__(self, state: dict) -> None:  # the session opens on the first run
        self.__dict__.update(state)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.session is None:
            self.session = self._open()
        outs = self.session.run(None, {"x": x})
        self._last = (x, outs[1:]) if len(outs) > 1 else None
        return outs[0]

    def encoder_means(self, x: np.ndarray) -> list[np.ndarray]:
        if not self.has_encoder:
            raise ValueError("this model has no feature-pyramid encoder to pool")
        x = np.ascontiguousarray(x, dtype=np.float32)
        last = self._last
        if last is not None and last[0].shape == x.shape and np.array_equal(last[0], x):
            return last[1]
        self.run(x)
        return self._last[1]


def cache_dir() -> Path:
    """Where graphs of read-only run folders go: ``$GLANDSEG_CACHE`` or ``~/.cache/glandseg``."""
    base = os.environ.get("GLANDSEG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "glandseg")
    return Path(base) / "onnx"


def choose_backend(backend: str, device, cfg: ModelConfig, trained: bool) -> str:
    """``"onnx"`` or ``"torch"`` for ``backend`` (``auto``/``onnx``/``torch``) and ``device``;
    one-line errors for combinations that cannot work."""
    if backend not in BACKENDS:
        raise GlandsegError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    dev = str(device)
    if backend == "onnx":
        if cfg.task == "instances":
            raise GlandsegError("Mask R-CNN models run on torch only (their ONNX export "
                                "fails on images without detections): use --backend torch "
                                "or auto")
        if not trained:
            raise GlandsegError("an untrained architecture has no ONNX graph: use --backend "
                                "torch")
        if dev not in ("auto", "cpu"):
            raise GlandsegError(f"--backend onnx runs on the CPU, not on {dev!r}: use "
                                "--backend torch for a GPU")
        return "onnx"
    if backend == "torch":
        return "torch"
    if cfg.task == "instances" or not trained or dev not in ("auto", "cpu"):
        return "torch"
    if dev == "auto" and _gpu_likely():
        return "torch"
    return "onnx" if _have("onnxruntime") else "torch"


def ensure_onnx(spec: str, weights: Path, threads: int | None = None,
                precision: str = "fp32") -> OnnxBackend:
    """The :class:`OnnxBackend` of the weights file ``weights`` (of model ``spec``): its
    graph beside it (``X.safetensors`` → ``X.onnx``) or in :func:`cache_dir`, made (torch)
    when missing or stale (made from other weights). ``precision="int8"``: the int8 graph
    (``X.int8.onnx``, :mod:`glandseg.models.quantize`), which is never made here (it needs
    calibration images): missing or stale, a one-line error says how to make it."""
    if precision not in PRECISIONS:
        raise GlandsegError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                            f"{precision!r}")
    sha = sha256_file(weights)
    beside = weights.with_suffix(".onnx")
    cached = cache_dir() / f"{sha[:24]}.onnx"
    if precision == "int8":
        if (why := int8_unsupported()) is not None:
            raise GlandsegError(why)
        for path in (int8_path(beside), int8_path(cached)):
            if path.is_file():
                be = OnnxBackend(path, threads)
                if be.meta.get("weights_sha256") == sha and be.precision == "int8":
                    return be
                log.warning("%s: not the int8 graph of %s (other weights)", path, weights)
        raise GlandsegError(f"{weights}: no int8 graph ({int8_path(beside).name}); make one "
                            f"with `glandseg export-onnx {spec} --int8 --calibration IMAGES` "
                            "(a few H&E images like the ones to segment), or use --precision "
                            "fp32")
    for path in (beside, cached):
        if path.is_file():
            be = OnnxBackend(path, threads)
            if be.meta.get("weights_sha256") == sha:
                return be
            log.info("%s: made from other weights than %s: making it again", path, weights)
    return OnnxBackend(export_graph(spec, weights, beside, cached), threads)


def export_graph(spec: str, weights: Path, dest: Path, fallback: Path | None = None) -> Path:
    """Export the network of ``spec`` (weights ``weights``) to ``dest`` (or ``fallback``
    when ``dest``'s folder is not writable). Needs torch."""
    if not _have("torch") or not _have("onnx"):
        raise torch_missing(f"{weights}: no ONNX graph beside it ({dest.name}); making one")
    from glandseg.models.onnx_export import export_onnx
    from glandseg.models.store import load

    model, cfg = load(spec, "cpu")
    target = dest
    if fallback is not None and not os.access(dest.parent, os.W_OK):
        fallback.parent.mkdir(parents=True, exist_ok=True)
        target = fallback
    log.info("exporting %s to ONNX (once): %s", spec, target)
    return export_onnx(model, cfg, target, weights)


def open_backend(spec: str, backend: str = "auto", device="auto",
                 threads: int | None = None, precision: str = "fp32"):
    """``(backend object, checked ModelConfig)`` of a model ``spec`` (bundled name,
    architecture, run folder or ``.safetensors`` file); ``precision``: ``fp32`` or ``int8``
    (ONNX Runtime only: :func:`ensure_onnx`)."""
    cfg, weights = resolve_config(spec)
    kind = choose_backend(backend, device, cfg, weights is not None)
    if precision != "fp32" and kind != "onnx":
        raise GlandsegError(f"--precision {precision} runs on ONNX Runtime (the CPU), not on "
                            "torch: use --backend onnx (or auto on a machine without GPU), "
                            "or --precision fp32")
    if kind == "onnx":
        return ensure_onnx(spec, Path(weights), threads, precision), cfg
    if not _have("torch"):
        raise torch_missing(f"model {spec} on the torch backend")
    from glandseg.models.store import load

    dev = pick_device(device)
    model, cfg = load(spec, dev)
    return TorchBackend(model, dev, threads), cfg
