"""Export a dense model (U-Net) to an ONNX graph that ONNX Runtime runs on the CPU.

The graph takes ``x``: ``float32 (B, 3, H, W)`` (normalised, ``H`` and ``W`` multiples of the
model's stride; batch, height and width are dynamic) and returns ``logits``
``float32 (B, C, H, W)`` and, for a network with a feature-pyramid encoder, ``enc0`` ..
``encN``: each encoder stage's feature map averaged over the image ``float32 (B, C_s)`` (what
the grader uses; :func:`glandseg.grade.features.encoder_features`).

Metadata (``custom_metadata_map``) records ``weights_sha256`` (the safetensors file it was
made from: a graph whose file changed since is stale and re-made), ``fingerprint``
(:mod:`glandseg.models.fingerprint`), ``stride``, ``task``, ``encoder_stages`` and the glandseg
version. Instance models (Mask R-CNN) are not exported: torchvision's detector does export
(legacy exporter, dynamic sizes), but the graph fails in ONNX Runtime on an image without
detections (the mask head's GroupNorm reshapes an empty RoI batch), so they run on torch.

Needs torch and the ``onnx`` package (``pip install 'glandseg[train]'``).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from glandseg import GlandsegError, __version__
from glandseg.data.io import atomic_path
from glandseg.models.config import ModelConfig
from glandseg.models.fingerprint import model_fingerprint, sha256_file

log = logging.getLogger(__name__)

__all__ = ["OPSET", "export_onnx"]

#: ONNX opset of the exported graphs (ONNX Runtime ≥ 1.12 runs it).
OPSET = 17


class _WithEncoderMeans(nn.Module):
    """``x → (logits, enc0 mean, …)`` for an :class:`~glandseg.models.unet.EncoderUNet`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        m = self.model
        feats = m.encoder(x)
        y = feats[-1]
        skips = feats[:-1][::-1] + [None]
        for block, skip in zip(m.decoder, skips, strict=True):
            y = block(y, skip)
        return (m.head(y), *[f.mean(dim=(2, 3)) for f in feats])


def _has_encoder(model: nn.Module) -> bool:
    enc = getattr(model, "encoder", None)
    return (enc is not None and hasattr(enc, "feature_info") and hasattr(model, "decoder")
            and hasattr(model, "head"))


def export_onnx(model: nn.Module, config: ModelConfig, out: str | Path,
                weights: str | Path | None = None) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as an ONNX graph to ``out`` (atomically: a temp
    file in the same folder, then renamed). ``weights``: the safetensors file the network was
    loaded from (its SHA-256 goes into the metadata). Returns ``out``."""
    if config.task == "instances":
        raise GlandsegError("Mask R-CNN models are not exported to ONNX (the exported "
                            "detector fails in ONNX Runtime on images without detections); "
                            "they run on torch: use --backend torch")
    import onnx

    out = Path(out)
    model = model.to("cpu", torch.float32).eval()
    stride = int(getattr(model, "stride", 32))
    with_enc = _has_encoder(model)
    net = _WithEncoderMeans(model) if with_enc else model
    n_stages = len(model.encoder.feature_info.channels()) if with_enc else 0
    names = ["logits"] + [f"enc{i}" for i in range(n_stages)]
    dyn = {"x": {0: "batch", 2: "height", 3: "width"},
           "logits": {0: "batch", 2: "height", 3: "width"}}
    dyn.update({f"enc{i}": {0: "batch"} for i in range(n_stages)})
    dummy = torch.zeros(1, 3, 4 * stride, 4 * stride)
    try:
        with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (dummy,), str(tmp), opset_version=OPSET,
                              input_names=["x"], output_names=names, dynamic_axes=dyn,
                              dynamo=False)
            graph = onnx.load(str(tmp))
            meta = {
                "glandseg_version": __version__,
                "fingerprint": model_fingerprint(model),
                "weights_sha256": sha256_file(weights) if weights else "",
                "stride": str(stride),
                "task": config.task,
                "encoder_stages": str(n_stages),
                "config": json.dumps(config.to_dict(), sort_keys=True),
            }
            del graph.metadata_props[:]
            for k, v in meta.items():
                graph.metadata_props.add(key=k, value=v)
            onnx.save(graph, str(tmp))
    except OSError as exc:
        raise GlandsegError(f"{out.parent}: cannot write the ONNX graph ({exc.strerror or exc}); "
                            "free space or choose a writable folder") from exc
    log.info("wrote the ONNX graph %s", out)
    return out
