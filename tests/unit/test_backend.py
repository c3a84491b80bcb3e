"""Network backends: ONNX Runtime and torch give the same probabilities and glands; the NumPy
resampling equals torch's; the CPU predict path never imports torch; graphs are made once,
re-made when stale, and refused cleanly where they cannot be."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glandseg import GlandsegError
from glandseg.data.resample import interpolate, resample, resize_image
from glandseg.infer.backend import OnnxBackend, choose_backend, ensure_onnx, open_backend
from glandseg.models.config import ModelConfig

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
F = torch.nn.functional
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["area", "bicubic", "bilinear", "bilinear-aa"])
@pytest.mark.parametrize("size", [(20, 31), (74, 106), (37, 109), (9, 53), (3, 5)])
def test_resampling_equals_torch(mode: str, size: tuple[int, int]) -> None:
    x = np.random.default_rng(0).random((3, 37, 53), dtype=np.float32)
    if mode == "area" and (size[0] > 37 or size[1] > 53):
        pytest.skip("area is for shrinking")
    t = torch.from_numpy(x)[None]
    if mode == "area":
        ref = F.interpolate(t, size=size, mode="area")
    else:
        ref = F.interpolate(t, size=size, mode=mode.removesuffix("-aa"), align_corners=False,
                            antialias=mode.endswith("-aa"))
    out = interpolate(x, size, mode)
    assert out.dtype == np.float32 and out.shape == (3, *size)
    np.testing.assert_allclose(out, ref[0].numpy(), atol=1e-5)  # float32 rounding


def test_resample_and_resize_image() -> None:
    img = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    small = resize_image(img, (20, 30))  # area
    assert small.dtype == np.uint8 and small.shape == (20, 30, 3)
    assert abs(int(small[0, 0, 0]) - round(float(img[:2, :2, 0].mean()))) <= 1
    x = img.transpose(2, 0, 1).astype(np.float32)
    assert resample(x, (40, 60)) is x
    with pytest.raises(ValueError, match="mode"):
        interpolate(x, (5, 5), "nearest")


@pytest.fixture
def tiny_unet(tiny_unet_run: Path) -> Path:
    return tiny_unet_run


def _tissue(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (230, 190, 220), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(4):
        cy, cx, r = rng.integers(10, h - 10), rng.integers(10, w - 10), rng.integers(6, 15)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (120, 60, 150)
    return img


@pytest.mark.parametrize("tta", [False, True])
def test_onnx_and_torch_agree(tiny_unet: Path, tta: bool) -> None:
    from glandseg.infer.predictor import Predictor

    po = Predictor.from_name(str(tiny_unet), device="cpu", backend="onnx", tta=tta)
    pt = Predictor.from_name(str(tiny_unet), device="cpu", backend="torch", tta=tta)
    assert (po.backend.name, pt.backend.name) == ("onnx", "torch") and po.model is None
    assert (tiny_unet / "best.onnx").is_file()  # made on first use, beside the weights
    # one piece, tiled (smaller tile than the image), and an odd size (padding)
    for shape, tile in (((96, 128), None), ((150, 170), 64), ((41, 75), None)):
        img = _tissue(*shape)
        if tile:
            for p in (po, pt):
                p.tiling = p.tiling.__class__(tile=tile, overlap=16, batch_size=2)
        lo, prob_o = po.predict_with_proba(img)
        lt, prob_t = pt.predict_with_proba(img)
        assert prob_o.shape == (3, *shape) and prob_o.dtype == np.float32
        np.testing.assert_allclose(prob_o, prob_t, atol=1e-4)
        assert np.array_equal(lo, lt)


def test_onnx_agrees_with_the_old_torch_pipeline(tiny_unet: Path) -> None:
    """Against the pre-ONNX pipeline (torch tensors end to end), rebuilt here from torch ops:
    resampling to the model's resolution, normalisation, padding, softmax."""
    from glandseg.infer.predictor import Predictor

    po = Predictor.from_name(str(tiny_unet), device="cpu", backend="onnx")
    model = Predictor.from_name(str(tiny_unet), device="cpu", backend="torch").model
    img = _tissue(90, 110, seed=4)
    probs = po.predict_proba(img, mpp=po.mpp * 1.6)  # enlarged 1.6x (bicubic), then back
    assert po.scale == 0.5  # unet-lite0's default working scale: a second, antialiased step
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(144, 176), mode="bicubic", align_corners=False).clamp(0, 1)
    x = F.interpolate(x, size=(72, 88), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(po.mean)[None]) / torch.tensor(po.std)[None]
    with torch.no_grad():
        p = torch.softmax(model(F.pad(x, (0, 8, 0, 24), mode="reflect")), 1)[..., :72, :88]
    ref = F.interpolate(p, size=(90, 110), mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-4)


def test_stale_graph_is_remade_and_read_only_folder_uses_the_cache(
        tiny_unet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((tiny_unet / "config.json").read_text())
    sd = load_file(str(tiny_unet / "best.safetensors"))
    save_file(sd, str(run / "best.safetensors"))
    be, _ = open_backend(str(run), backend="onnx")
    first = be.meta["weights_sha256"]
    # new weights in the run folder (a later epoch): the graph is made again
    sd = {k: (v * 1.01 if v.is_floating_point() else v) for k, v in sd.items()}
    save_file(sd, str(run / "best.safetensors"))
    be2, _ = open_backend(str(run), backend="onnx")
    assert be2.meta["weights_sha256"] != first and be2.path == run / "best.onnx"
    # a folder it cannot write to: the graph goes to the cache
    (run / "best.onnx").unlink()
    monkeypatch.setenv("GLANDSEG_CACHE", str(tmp_path / "cache"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == run else real_access(p, m))
    be3 = ensure_onnx(str(run), run / "best.safetensors")
    assert be3.path.parent == tmp_path / "cache" / "onnx" and not (run / "best.onnx").exists()


def test_backend_choice_and_its_errors() -> None:
    unet = ModelConfig.from_dict({"model": "unet-lite0", "task": "contour"}, "t")
    mrcnn = ModelConfig.from_dict({"model": "maskrcnn-lite0", "task": "instances"}, "t")
    assert choose_backend("onnx", "cpu", unet, True) == "onnx"
    assert choose_backend("torch", "cpu", unet, True) == "torch"
    assert choose_backend("auto", "cpu", mrcnn, True) == "torch"  # Mask R-CNN: torch only
    assert choose_backend("auto", "cpu", unet, False) == "torch"  # untrained: no graph
    assert choose_backend("auto", "cuda", unet, True) == "torch"
    if not os.path.exists("/proc/driver/nvidia/version") and sys.platform != "darwin":
        assert choose_backend("auto", "auto", unet, True) == "onnx"
    with pytest.raises(GlandsegError, match="Mask R-CNN"):
        choose_backend("onnx", "cpu", mrcnn, True)
    with pytest.raises(GlandsegError, match="runs on the CPU"):
        choose_backend("onnx", "cuda", unet, True)
    with pytest.raises(GlandsegError, match="backend must be"):
        choose_backend("tensorrt", "cpu", unet, True)


def test_damaged_graph_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(GlandsegError, match="not a valid ONNX graph"):
        OnnxBackend(bad)


def test_onnx_backend_pickles_for_dask_workers(tiny_unet: Path) -> None:
    be, _ = open_backend(str(tiny_unet), backend="onnx", threads=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    be2 = pickle.loads(pickle.dumps(be))
    assert be2.threads == 1 and np.array_equal(be.run(x), be2.run(x))


def test_cli_predict_and_import_never_load_torch(tmp_path: Path) -> None:
    """`import glandseg` and a CPU predict (with grading) run with torch unimportable."""
    from glandseg.data.io import write_image

    write_image(tmp_path / "img.png", _tissue(96, 128))
    def script(extra: str, out: str) -> str:
        return code.replace("'predict', ", f"'predict', {extra}").replace("OUT", out)

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import glandseg\n"
        "from glandseg.cli import main\n"
        f"rc = main(['-q', 'predict', {str(tmp_path / 'img.png')!r}, '--out', 'OUT'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", script("", str(tmp_path / "out"))], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "out" / "img.png").is_file()
    assert "grade" in (tmp_path / "out" / "images.csv").read_text()
    # asking for torch there is a one-line error with the fix
    code2 = script("'--backend', 'torch', ", str(tmp_path / "out2"))
    r2 = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True,
                        cwd=ROOT, timeout=300)
    assert r2.returncode != 0 and "pip install 'glandseg[train]'" in r2.stderr
    assert "Traceback" not in r2.stderr


def test_export_onnx_cli(tiny_unet: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from glandseg.cli import main

    assert main(["-q", "export-onnx", str(tiny_unet), "--out", str(tmp_path / "m.onnx")]) == 0
    be = OnnxBackend(tmp_path / "m.onnx")
    assert be.outputs[0] == "logits" and be.has_encoder and len(be.fingerprint) == 64
    assert main(["-q", "export-onnx", "glas-maskrcnn", "--out", str(tmp_path / "r.onnx")]) == 1
    assert "torch" in capsys.readouterr().err
    assert main(["-q", "export-onnx", str(tiny_unet), "--out", str(tmp_path / "m.txt")]) == 1


def test_slide_windows_get_aligned_tiles_on_onnx(tiny_unet: Path) -> None:
    from glandseg.infer.predictor import Predictor, _starts
    from glandseg.infer.slide import SlideConfig, window_predictor

    po = Predictor.from_name(str(tiny_unet), device="cpu", backend="onnx")
    pt = Predictor.from_name(str(tiny_unet), device="cpu", backend="torch")
    w = window_predictor(po, SlideConfig())
    assert w is not po and w.backend is po.backend and po.tiling.tile == 512
    t = w.tiling
    assert _starts(2560, t.tile, t.tile - t.overlap) == [0, 2560 - t.tile]  # 2 x 2 tiles
    assert t.tile <= 1536 and t.tile % 32 == 0
    assert window_predictor(pt, SlideConfig()) is pt  # torch: the model's own tiles
    assert window_predictor(po, SlideConfig(aligned_tiles=False)) is po
    assert window_predictor(pt, SlideConfig(aligned_tiles=True)).tiling == t
    with pytest.raises(GlandsegError, match="aligned_tiles"):
        SlideConfig(aligned_tiles="yes")  # type: ignore[arg-type]
