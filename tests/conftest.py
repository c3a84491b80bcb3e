"""Shared test fixtures: the real GlaS folder (skipped when absent) and tiny synthetic
GlaS-like folders written on the fly (nothing of GlaS is ever copied into the repo)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

log = logging.getLogger(__name__)

#: Where the GlaS data is looked for when ``GLANDSEG_GLAS`` is not set: ``../shared/glas``.
GLAS_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "glas"

#: Patient and grade of each synthetic image, as a GlaS ``Grade.csv`` would give them.
SYNTH_GRADES = {
    **{f"train_{i}": (1 + (i - 1) // 2, "malignant" if i % 3 else "benign") for i in range(1, 13)},
    **{f"testA_{i}": (20 + i, "benign" if i % 2 else "malignant") for i in range(1, 4)},
    **{f"testB_{i}": (30 + i, "malignant") for i in range(1, 3)},
}


def glas_path() -> Path:
    """The GlaS folder: ``$GLANDSEG_GLAS`` or ``../shared/glas``."""
    env = os.environ.get("GLANDSEG_GLAS")
    return Path(env) if env else GLAS_DEFAULT


@pytest.fixture(scope="session")
def glas_dir() -> Path:
    """The real GlaS folder; skips the test when it is absent."""
    path = glas_path()
    if not path.is_dir() or not any(path.glob("train_1.*")) and not any(path.glob("*/train_1.*")):
        pytest.skip(f"GlaS data not found at {path}; set GLANDSEG_GLAS")
    return path


def synth_pair(
    h: int = 40, w: int = 48, n_glands: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic ``(image uint8 (H, W, 3), labels uint8 (H, W))`` pair: pink noise
    with ``n_glands`` darker, non-overlapping rectangles labelled 1..n."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[...] = (230, 170, 200)
    img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    lab = np.zeros((h, w), np.uint8)
    cols = max(1, n_glands)
    cw = w // cols
    for k in range(n_glands):
        y0, y1 = h // 5 + (k % 2), h - h // 5
        x0, x1 = k * cw + 2, (k + 1) * cw - 2
        if x1 - x0 < 2:
            break
        lab[y0:y1, x0:x1] = k + 1
        img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * 0.6).astype(np.uint8)
    return img, lab


def write_grade_csv(path: Path, names: Sequence[str], newline: str = "\r") -> None:
    """Write a GlaS-style ``Grade.csv`` (CR-only endings and spaces after commas, like the
    original) for ``names`` (from :data:`SYNTH_GRADES`, or patient 99 / benign)."""
    rows = ["name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
    for n in names:
        patient, grade = SYNTH_GRADES.get(n, (99, "benign"))
        rows.append(f"{n},{patient}, {grade}, adenomatous")
    path.write_bytes(newline.join(rows).encode() + newline.encode())


def make_glas_folder(
    root: Path,
    names: Sequence[str] = ("train_1", "train_2", "train_3", "testA_1", "testA_2", "testB_1"),
    ext: str = ".bmp",
    layout: str = "flat",
    size: tuple[int, int] = (40, 48),
    n_glands: int = 3,
    grades: bool = True,
    annotations: bool = True,
) -> Path:
    """Write a tiny GlaS-like folder and return ``root``.

    ``layout``: ``"flat"`` (official: all files side by side) or ``"split"`` (the study's
    ``train/`` and ``test/`` sub-folders). ``ext``: ``.bmp``, ``.png`` or ``.tif``.
    Sizes vary a little per image (``size`` plus up to 3 px) like GlaS's do.
    """
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        folder = root
        if layout == "split":
            folder = root / ("train" if name.startswith("train") else "test")
            folder.mkdir(exist_ok=True)
        img, lab = synth_pair(size[0] + i % 4, size[1] + i % 3, n_glands, seed=i)
        Image.fromarray(img).save(folder / f"{name}{ext}")
        if annotations:
            Image.fromarray(lab).save(folder / f"{name}_anno{ext}")
    if grades:
        write_grade_csv(root / "Grade.csv", names)
    return root


@pytest.fixture
def make_glas(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_glas(**kw)`` writes a synthetic GlaS folder under ``tmp_path``
    (see :func:`make_glas_folder`); each call gets a fresh sub-folder."""
    counter = iter(range(1000))

    def make(**kw: object) -> Path:
        return make_glas_folder(tmp_path / f"glas{next(counter)}", **kw)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def tiny_unet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (``config.json`` + ``best.safetensors``) of an untrained unet-lite0
    (random init, seed 0, no download): a real encoder U-Net for backend and grader tests."""
    import json

    import torch
    from safetensors.torch import save_file

    from glandseg.models import registry

    d = tmp_path_factory.mktemp("tiny_unet")
    cfg = registry.default_config("unet-lite0")
    torch.manual_seed(0)
    model = registry.build_model(cfg, pretrained=False)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(d / "best.safetensors"))
    return d


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is several times faster on a busy 2-core machine.
    Modules that want it: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _recorder_class():
    import torch
    from torch import nn

    class Recorder(nn.Module):
        """A stand-in contour network (3 output channels, all zero) that keeps every batch
        it is given (``inputs``): what a Predictor feeds the model, after its pre-processing."""

        stride = 8

        def __init__(self) -> None:
            super().__init__()
            self.inputs: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.inputs.append(x.clone())
            return torch.zeros(x.shape[0], 3, *x.shape[-2:])

    return Recorder


Recorder = _recorder_class()
