"""Export a dense model (U-Net) as a bioimage.io model package (QuPath, deepImageJ, ilastik).

:func:`export_bioimageio` writes one zip file holding

- ``rdf.yaml``: the bioimage.io model description (format 0.5): inputs, pre-processing,
  outputs, weights, citations, licence, covers, test tensors;
- ``probabilities.onnx``: an ONNX graph (opset 17) made with torch from the safetensors
  weights, ``input float32 (B, 3, H, W)`` (normalised; ``H``, ``W`` multiples of the stride)
  → ``probabilities float32 (B, C, H, W)``: softmax over the channel axis (contour models:
  0 = background, 1 = gland interior, 2 = gland boundary) or a sigmoid (binary models: the
  probability of gland). It is not glandseg's own graph (that one also outputs the encoder
  means the grader reads): a consumer gets exactly one output;
- ``test_input.npy`` (``uint8 (1, 3, h, w)``: a crop of a GlaS *training* image, before the
  pre-processing) and ``test_output.npy`` (``float32 (1, C, h, w)``: the graph's output on it
  after the pre-processing, run with ONNX Runtime);
- ``cover.png`` (the crop and its predicted classes), ``README.md`` (what the package does and
  does not do) and ``glandseg_config.json`` (the model's glandseg config).

The pre-processing is stated in the description, not built into the graph: ``uint8`` RGB
→ ``float32``, ``scale_linear`` (gain 1/255) and ``fixed_zero_mean_unit_variance`` with the
model's mean and std per channel, then ``ensure_dtype`` ``float32`` (stated: the spec would
otherwise end it with the input's ``uint8``). Instance segmentation (the watershed of glandseg's
post-processing, the splitting of touching glands) is glandseg's and is not in the package.

The package is checked with ``bioimageio.spec`` (``load_description(...,
perform_io_checks=True)``: the format, every file present, SHA-256 of the weights) before it
is renamed into place; a package that fails is never left behind. Needs torch, onnx
(``pip install 'glandseg[train]'``) and ``bioimageio.spec`` (``pip install bioimageio.spec``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from glandseg import GlandsegError, __version__
from glandseg.data.discover import split_of
from glandseg.data.io import atomic_path, read_image, write_image, write_text
from glandseg.models.config import ModelConfig
from glandseg.models.fingerprint import sha256_file

log = logging.getLogger(__name__)

__all__ = ["CITATIONS", "FORMAT_VERSION", "LICENSE", "OPSET", "check_package",
           "export_bioimageio", "package_problems"]

#: bioimage.io model description format written (``bioimageio.spec`` 0.5.x).
FORMAT_VERSION = "0.5.4"
#: ONNX opset of the packaged graph.
OPSET = 17
#: SPDX licence of the package: glandseg's own (pyproject.toml ``license``).
LICENSE = "Apache-2.0"
#: What a user of the package must cite: the GlaS data the weights were trained on and U-Net.
CITATIONS = [
    {"text": "Sirinukunwattana K. et al. Gland segmentation in colon histology images: "
             "The GlaS challenge contest. Medical Image Analysis 35 (2017) 489-502",
     "doi": "10.1016/j.media.2016.08.008"},
    {"text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for "
             "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241",
     "doi": "10.1007/978-3-319-24574-4_28"},
]
_CLASS_NAMES = {"contour": ["background", "gland_interior", "gland_boundary"],
                "binary": ["gland"]}
_GLAS_TERMS = ("The weights were trained on the GlaS@MICCAI'2015 training images "
               "(Warwick-QU), which the organisers provide for research use; cite "
               "Sirinukunwattana et al. 2017 (doi:10.1016/j.media.2016.08.008) when you use "
               "this model.")


def _need(module: str, hint: str) -> None:
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package (bioimageio) is missing
        found = False
    if not found:
        raise GlandsegError(f"the bioimage.io export needs {module}: {hint}")


def export_bioimageio(spec: str, out_zip: str | Path, sample: str | Path, crop: int = 256,
                      name: str | None = None) -> Path:
    """Write the bioimage.io package of the dense model ``spec`` (bundled name, run folder or
    ``.safetensors`` file) to ``out_zip`` (atomically: a temp file in the same folder, checked
    with ``bioimageio.spec``, then renamed).

    ``sample``: an RGB image at the model's resolution (GlaS: 0.62 µm/px, 20x) that the model
    was trained on (a GlaS training image): the ``crop`` x ``crop`` pixels (a multiple of the
    model's stride) where the model sees glands and stroma most evenly (:func:`_pick_crop`)
    become the test input and the cover. ``name``: the package's
    name (default: from ``spec``). Returns ``out_zip``."""
    _need("torch", "pip install 'glandseg[train]'")
    _need("onnx", "pip install 'glandseg[train]'")
    _need("bioimageio.spec", "pip install bioimageio.spec")
    from glandseg.models.store import load, resolve_config

    out_zip = Path(out_zip)
    if out_zip.suffix.lower() != ".zip":
        raise GlandsegError(f"{out_zip}: a bioimage.io package is a .zip file; give a name "
                            "ending in .zip")
    if not out_zip.parent.is_dir():
        raise GlandsegError(f"{out_zip}: folder {out_zip.parent} does not exist")
    cfg, weights = resolve_config(spec)
    if weights is None:
        raise GlandsegError(f"{spec}: an architecture without trained weights; export a "
                            "bundled model, a run folder or a .safetensors file")
    if cfg.task not in _CLASS_NAMES:
        raise GlandsegError(f"{spec}: an instance model (Mask R-CNN) is not exported to "
                            "bioimage.io; export a U-Net (task contour or binary)")
    if cfg.preprocess.scale != 1.0:
        raise GlandsegError(f"{spec}: working scale {cfg.preprocess.scale} (not 1): a resize "
                            "is not a bioimage.io pre-processing step; export a model trained "
                            "at scale 1")
    model, cfg = load(spec, "cpu")
    stride = int(getattr(model, "stride", 32))
    if crop < stride or crop % stride:
        raise GlandsegError(f"crop {crop}: give a multiple of the model's stride {stride}")
    if split_of(Path(sample).stem) in ("testA", "testB"):
        raise GlandsegError(f"{sample}: a GlaS test image; the package's test crop must come "
                            "from a training image (e.g. train_1.bmp): test images stay unseen")
    image = read_image(sample)
    h, w = image.shape[:2]
    if h < crop or w < crop:
        raise GlandsegError(f"{sample}: {w}x{h} px, smaller than the {crop}x{crop} test crop; "
                            "give a GlaS training image or a smaller --crop")
    try:
        with atomic_path(out_zip) as tmp_zip, \
                tempfile.TemporaryDirectory(prefix="glandseg-bioimageio-") as work:
            files = _write_contents(Path(work), model, cfg, Path(weights), image, crop, stride,
                                    name or _default_name(spec), Path(sample).name)
            with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in files:
                    zf.write(Path(work) / f, f)
            problems = package_problems(tmp_zip)
            if problems:  # atomic_path removes the temporary zip
                raise GlandsegError(f"{out_zip}: the package fails the bioimage.io check "
                                    f"({problems}); nothing was written")
    except OSError as exc:
        raise GlandsegError(f"{out_zip.parent}: cannot write the package "
                            f"({exc.strerror or exc}); free space or choose a writable "
                            "folder") from exc
    log.info("wrote the bioimage.io package %s", out_zip)
    return out_zip


def _default_name(spec: str) -> str:
    stem = Path(spec).stem if spec.endswith(".safetensors") else Path(spec).name
    # bioimage.io names allow letters, digits, space and _+-() only
    stem = re.sub(r"[^A-Za-z0-9_+\- ]+", "-", stem).strip("- ") or "model"
    return f"GlaS gland segmentation U-Net (glandseg {stem})"


def package_problems(path: str | Path) -> str:
    """``""`` when the package (zip) or ``rdf.yaml`` at ``path`` passes ``bioimageio.spec``'s
    check with its files read (``perform_io_checks=True``: every file present, SHA-256 of the
    weights), else the first errors on one line."""
    from bioimageio.spec import InvalidDescr, load_description

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        descr = load_description(str(path), perform_io_checks=True)
    summary = descr.validation_summary
    if isinstance(descr, InvalidDescr) or summary.status == "failed":
        errs = []
        for detail in summary.details:
            for e in detail.errors:
                errs.append(f"{e.loc}: {e.msg}")
        return "; ".join(" ".join(e.split()) for e in errs[:3]) or "invalid description"
    return ""


def check_package(path: str | Path):
    """The checked description (``bioimageio.spec`` ``ModelDescr``) of the package at ``path``;
    :class:`GlandsegError` when it fails the check."""
    _need("bioimageio.spec", "pip install bioimageio.spec")
    problems = package_problems(path)
    if problems:
        raise GlandsegError(f"{path}: not a valid bioimage.io package ({problems})")
    from bioimageio.spec import load_description

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_description(str(path), perform_io_checks=True)


def _export_graph(model, cfg: ModelConfig, stride: int, dest: Path, weights: Path) -> None:
    """``input float32 (B, 3, H, W)`` → ``probabilities float32 (B, C, H, W)`` (softmax over
    channels; sigmoid for a binary model): the only output."""
    import onnx
    import torch
    from torch import nn

    class Probabilities(nn.Module):
        def __init__(self, net: nn.Module, binary: bool) -> None:
            super().__init__()
            self.net, self.binary = net, binary

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)
            return torch.sigmoid(y) if self.binary else torch.softmax(y, dim=1)

    net = Probabilities(model.to("cpu", torch.float32).eval(), cfg.task == "binary").eval()
    dyn = {"input": {0: "batch", 2: "height", 3: "width"},
           "probabilities": {0: "batch", 2: "height", 3: "width"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 4 * stride, 4 * stride),), str(dest),
                          opset_version=OPSET, input_names=["input"],
                          output_names=["probabilities"], dynamic_axes=dyn, dynamo=False)
    graph = onnx.load(str(dest))
    del graph.metadata_props[:]
    for k, v in {"glandseg_version": __version__, "weights_sha256": sha256_file(weights),
                 "task": cfg.task, "stride": str(stride)}.items():
        graph.metadata_props.add(key=k, value=v)
    onnx.save(graph, str(dest))


def _run_graph(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _cover(patch: np.ndarray, probs: np.ndarray, task: str) -> np.ndarray:
    """``uint8 (h, 2w, 3)``: the crop beside it with the predicted classes tinted (interior
    green, boundary yellow; binary: gland green)."""
    over = patch.astype(np.float32)
    if task == "binary":
        masks = [(probs[0] >= 0.5, (0, 200, 0))]
    else:
        cls = probs.argmax(axis=0)
        masks = [(cls == 1, (0, 200, 0)), (cls == 2, (255, 220, 0))]
    for m, colour in masks:
        over[m] = 0.45 * over[m] + 0.55 * np.asarray(colour, np.float32)
    return np.concatenate([patch, np.clip(over, 0, 255).astype(np.uint8)], axis=1)


def _normalised(image: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """``uint8 (h, w, 3)`` → ``float32 (1, 3, h, w)``: x / 255, then (x - mean) / std, the
    package's pre-processing."""
    x = image.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 255)
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return (x - m) / s


def _pick_crop(image: np.ndarray, graph: Path, crop: int, stride: int, mean: list[float],
               std: list[float]) -> tuple[int, int]:
    """``(y0, x0)`` of the ``crop`` x ``crop`` window (on a ``stride`` grid) whose predicted
    gland fraction (interior + boundary, or the binary probability) is closest to one half,
    so the test crop and the cover show glands and stroma; ties: the most central."""
    h, w = image.shape[:2]
    ph, pw = (-h) % stride, (-w) % stride
    x = _normalised(image, mean, std)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
    p = _run_graph(graph, x)[0, :, :h, :w]
    gland = p[0] if p.shape[0] == 1 else 1.0 - p[0]
    best = None
    for y0 in sorted(set(list(range(0, h - crop + 1, stride)) + [(h - crop) // 2])):
        for x0 in sorted(set(list(range(0, w - crop + 1, stride)) + [(w - crop) // 2])):
            frac = float(gland[y0:y0 + crop, x0:x0 + crop].mean())
            key = (round(abs(frac - 0.5), 2), abs(y0 - (h - crop) / 2) + abs(x0 - (w - crop) / 2))
            if best is None or key < best[0]:
                best = (key, (y0, x0))
    return best[1]


def _write_contents(work: Path, model, cfg: ModelConfig, weights: Path, image: np.ndarray,
                    crop: int, stride: int, name: str, sample_name: str) -> list[str]:
    """Write the package's files into ``work``; returns their names (``rdf.yaml`` first)."""
    from bioimageio.spec import save_bioimageio_yaml_only

    mean = [float(v) for v in cfg.preprocess.mean]
    std = [float(v) for v in cfg.preprocess.std]
    graph = work / "probabilities.onnx"
    _export_graph(model, cfg, stride, graph, weights)
    y0, x0 = _pick_crop(image, graph, crop, stride, mean, std)
    patch = np.ascontiguousarray(image[y0:y0 + crop, x0:x0 + crop])
    test_in = patch.transpose(2, 0, 1)[None].copy()  # uint8 (1, 3, h, w)
    test_out = _run_graph(graph, _normalised(patch, mean, std)).astype(np.float32)
    np.save(work / "test_input.npy", test_in)
    np.save(work / "test_output.npy", test_out)
    write_image(work / "cover.png", _cover(patch, test_out[0], cfg.task))
    write_image(work / "sample_input.png", patch)
    sample_out = np.round(test_out[0] * 255).astype(np.uint8)
    if sample_out.shape[0] == 3:
        write_image(work / "sample_output.png", sample_out.transpose(1, 2, 0))
    else:
        from PIL import Image

        Image.fromarray(sample_out[0]).save(work / "sample_output.png")
    classes = _CLASS_NAMES[cfg.task]
    write_text(work / "README.md", _readme(name, cfg, classes, mean, std, stride, weights,
                                           sample_name, crop, (y0, x0)))
    write_text(work / "glandseg_config.json", json.dumps(cfg.to_dict(), indent=1) + "\n")
    mpp = cfg.mpp
    space = {"type": "space", "unit": "micrometer", "scale": mpp}
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": (
            f"Gland segmentation in H&E colon histology (GlaS), {mpp:.2f} µm/px (20x): "
            "per-pixel class probabilities ("
            + ", ".join(f"{i} = {c.replace('_', ' ')}" for i, c in enumerate(classes))
            + ") of glandseg's U-Net. Instance splitting (watershed) is glandseg's, not in "
            "this package."),
        "authors": [{"name": "glandseg contributors"}],
        "cite": CITATIONS,
        "license": LICENSE,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["glandseg", "unet", "semantic-segmentation", "histology", "h-and-e",
                 "colon", "gland", "glas", "2d", "onnx", "pytorch"],
        "timestamp": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "version": __version__,
        "attachments": [{"source": "glandseg_config.json"}],
        "inputs": [{
            "id": "input",
            "description": "RGB H&E image, 8-bit values (0-255), at "
                           f"{mpp:.2f} µm/px; height and width multiples of {stride}",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": ["red", "green", "blue"]},
                {"id": "y", **space, "size": {"min": stride, "step": stride}},
                {"id": "x", **space, "size": {"min": stride, "step": stride}},
            ],
            "test_tensor": {"source": "test_input.npy", "sha256": sha256_file(work / "test_input.npy")},
            "sample_tensor": {"source": "sample_input.png",
                              "sha256": sha256_file(work / "sample_input.png")},
            "data": {"type": "uint8", "range": [0, 255]},
            "preprocessing": [
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "scale_linear", "kwargs": {"gain": 1.0 / 255.0, "offset": 0.0}},
                {"id": "fixed_zero_mean_unit_variance",
                 "kwargs": {"axis": "channel", "mean": mean, "std": std}},
                # explicit: without a final ensure_dtype, bioimageio.spec appends one to the
                # input's data type (uint8), which would truncate the normalised values
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
            ],
        }],
        "outputs": [{
            "id": "probabilities",
            "description": ("class probabilities per pixel (softmax over the channel axis): "
                            if cfg.task != "binary" else "probability of gland per pixel: ")
                           + ", ".join(f"{i} = {c}" for i, c in enumerate(classes)),
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": classes},
                {"id": "y", **space, "size": {"tensor_id": "input", "axis_id": "y"}},
                {"id": "x", **space, "size": {"tensor_id": "input", "axis_id": "x"}},
            ],
            "test_tensor": {"source": "test_output.npy",
                            "sha256": sha256_file(work / "test_output.npy")},
            "sample_tensor": {"source": "sample_output.png",
                              "sha256": sha256_file(work / "sample_output.png")},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"onnx": {"source": "probabilities.onnx",
                             "sha256": sha256_file(work / "probabilities.onnx"),
                             "opset_version": OPSET}},
    }
    save_bioimageio_yaml_only(rdf, work / "rdf.yaml")
    return ["rdf.yaml", "README.md", "cover.png", "probabilities.onnx", "test_input.npy",
            "test_output.npy", "sample_input.png", "sample_output.png", "glandseg_config.json"]


def _readme(name: str, cfg: ModelConfig, classes: list[str], mean: list[float],
            std: list[float], stride: int, weights: Path, sample_name: str, crop: int,
            origin: tuple[int, int]) -> str:
    mc = (cfg.to_dict().get("model_card") or {})
    shipped = (mc.get("training") or {}).get("validation_shipped") or {}
    quality = ("No validation figures are recorded in this model's config.\n" if not shipped
               else "glandseg's full pipeline (these probabilities, then its post-processing, "
               f"with --deblur {(mc.get('inference') or {}).get('deblur', 'off')}) on "
               f"{shipped.get('images', '?')} GlaS training images of held-out patients: "
               f"F1 {shipped.get('f1', float('nan')):.3f}, object Dice "
               f"{shipped.get('object_dice', float('nan')):.3f} (pooled, official GlaS "
               "metrics). The probabilities alone are not scored; this package is checked "
               "with bioimageio.spec and its test output is the graph's own.\n")
    out = "softmax over the channel axis" if cfg.task != "binary" else "sigmoid"
    sample_note = ("grey levels: gland" if len(classes) == 1 else
                   "one colour channel per class: red background, green interior, blue boundary")
    lines = "\n".join(f"- channel {i}: {c.replace('_', ' ')}" for i, c in enumerate(classes))
    return f"""# {name}

A U-Net ({cfg.model}) trained with glandseg (gland instance segmentation toolkit) to segment
glands in H&E-stained colon histology (GlaS@MICCAI'2015 data), exported from
`{weights.name}` (SHA-256 `{sha256_file(weights)[:16]}…`) with glandseg {__version__}.

## What it does

Input: an RGB image, 8-bit (0-255), axes batch, channel, y, x; height and width multiples of
{stride} (at least {stride}). Resolution: **{cfg.mpp:.2f} µm/px (20x objective)**, the GlaS
scans'; rescale other scans to it first (a 40x scan at 0.25 µm/px: by 0.4).
Pre-processing (stated in rdf.yaml, applied by the consumer): to float32, x / 255, then
(x - mean) / std per channel with mean {mean} and std {std}.

Output `probabilities`: float32, same size as the input, {out}:
{lines}

The ONNX graph (opset {OPSET}) has exactly this one output. Large images: run it on tiles
(e.g. 1024 x 1024 with 128 px overlap, as glandseg does) and blend.

## What it does not include

- **Instances.** Separating touching glands (interior seeds, watershed over the foreground,
  minimum areas, hole filling) is glandseg's post-processing
  (thresholds in `glandseg_config.json`, `postprocess`), not part of this package: a
  threshold of channel 1 gives gland interiors, not one object per gland.
- glandseg's automatic sharpening of blurred scans (`--deblur auto`), stain normalisation,
  test-time flips and the resolution handling of whole slides.
- The gland grading (benign/malignant) and the encoder features it uses.

For instance labels as scored in the GlaS challenge, run glandseg itself
(`glandseg predict`), or apply its post-processing to these probabilities.

## Validation

{quality}
## Test data

`test_input.npy` is the {crop} x {crop} crop of `{sample_name}` at row {origin[0]}, column
{origin[1]}, a GlaS *training* image
(never a test image); `test_output.npy` is this graph's output on it (ONNX Runtime, CPU).
The cover shows the crop and the predicted classes (interior green, boundary yellow).
`sample_input.png` is the crop; `sample_output.png` its probabilities x 255 as an 8-bit image
({sample_note}).

## Licence and terms

Package and weights: {LICENSE} (glandseg's licence). {_GLAS_TERMS}
Cite also U-Net: Ronneberger et al. 2015 (doi:10.1007/978-3-319-24574-4_28).
"""
