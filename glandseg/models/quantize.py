"""An int8 ONNX graph of an exported U-Net (:mod:`glandseg.models.onnx_export`), for
``--precision int8`` on the CPU.

Static quantisation with ONNX Runtime's tools: QDQ format, weights int8 per output
channel, activations uint8 with ranges calibrated (min-max) on a few normalised images. The
graph keeps the fp32 graph's inputs, outputs (logits and encoder means) and metadata
(``weights_sha256``, ``fingerprint``, ``stride``, ...), and adds ``precision = "int8"`` and
``calibration`` (what it was calibrated on). Its probabilities differ slightly from the fp32
graph's, so its glands do too: the README gives the validation figures
(``benchmarks/bench_int8.py``). It needs a CPU with int8 dot-product instructions (AVX-512
VNNI, AVX-VNNI or AMX: Intel since Cascade Lake/Alder Lake, AMD since Zen 4); on other x86
CPUs ONNX Runtime's int8 convolutions saturate and the glands are wrong, so the backend
refuses it there (:func:`glandseg.infer.backend.int8_unsupported`). Quantising with 7-bit
weights (``reduce_range``) avoids the saturation but lost 0.021 of F1 on the validation
patients (AMD EPYC, AVX2), outside the 0.005 allowed, so it is not offered.

Needs ``onnx`` (``pip install 'glandseg[train]'``) to make the graph; ONNX Runtime alone
runs it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from glandseg import GlandsegError
from glandseg.data.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["INT8_SUFFIX", "int8_path", "quantize_int8"]

#: ``X.onnx`` → ``X.int8.onnx``: where the int8 graph of a model goes.
INT8_SUFFIX = ".int8.onnx"


def int8_path(fp32: str | os.PathLike) -> Path:
    """The int8 graph's path beside the fp32 graph ``fp32`` (``X.onnx`` → ``X.int8.onnx``)."""
    p = Path(fp32)
    return p.with_name(p.name.removesuffix(".onnx") + INT8_SUFFIX)


def quantize_int8(fp32: str | os.PathLike, out: str | os.PathLike,
                  calibration: Iterable[np.ndarray], source: str = "") -> Path:
    """Write the int8 graph of the fp32 graph ``fp32`` to ``out`` (atomically).

    ``calibration``: normalised images ``float32 (1, 3, h, w)`` (``h``, ``w`` multiples of
    the stride), as the model's pre-processing makes them; at least one. ``source``: what
    they are (recorded in the metadata). Raises :class:`GlandsegError` for no calibration
    images or a graph that is not one of ours."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise GlandsegError("making an int8 graph needs the onnx package: pip install "
                            "'glandseg[train]'") from exc
    fp32, out = Path(fp32), Path(out)
    src = onnx.load(str(fp32), load_external_data=False)
    meta = {p.key: p.value for p in src.metadata_props}
    if "weights_sha256" not in meta:
        raise GlandsegError(f"{fp32}: not a graph made by glandseg export-onnx (no "
                            "weights_sha256 in its metadata)")
    batches = []
    for x in calibration:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[:2] != (1, 3):
            raise GlandsegError(f"calibration images must be float32 (1, 3, h, w), got {x.shape}")
        batches.append({"x": x})
    if not batches:
        raise GlandsegError("no calibration images: give a few H&E images like the ones to "
                            "segment (e.g. GlaS training images)")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    with atomic_path(out) as q, tempfile.TemporaryDirectory(prefix="glandseg-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        log.info("calibrating int8 ranges on %d image(s)", len(batches))
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        g = onnx.load(str(q))
        meta.update(precision="int8", calibration=source or f"{len(batches)} image(s)")
        del g.metadata_props[:]
        for k, v in meta.items():
            g.metadata_props.add(key=k, value=v)
        onnx.save(g, str(q))
    return out
