"""``glandseg export-onnx glas-unet --bioimageio OUT.zip``: the package passes bioimageio.spec's
check (files read), its graph has one output (softmax probabilities), its test output is the
graph's on its test input after the pre-processing the description states, and both equal
glandseg's own Predictor probabilities; a package that fails the check is never left behind."""

from __future__ import annotations

import io
import json
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from glandseg import GlandsegError

pytest.importorskip("torch", reason="the bioimage.io export needs torch: pip install 'glandseg[train]'")
pytest.importorskip("onnx", reason="the bioimage.io export needs onnx: pip install 'glandseg[train]'")
pytest.importorskip("bioimageio.spec",
                    reason="the bioimage.io check needs bioimageio.spec: pip install bioimageio.spec")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]


def _train_image(glas_dir: Path) -> Path:
    found = [p for p in sorted(glas_dir.glob("train_1.*")) + sorted(glas_dir.glob("*/train_1.*"))
             if p.suffix.lower() in (".bmp", ".png", ".tif", ".tiff")]
    if not found:
        pytest.skip(f"no train_1 image in {glas_dir}")
    return found[0]


@pytest.fixture(scope="module")
def package(glas_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glandseg.models.bioimageio import export_bioimageio

    out = tmp_path_factory.mktemp("bioimageio") / "glas-unet.zip"
    assert export_bioimageio("glas-unet", out, _train_image(glas_dir), crop=256) == out
    return out


def _preprocess(x: np.ndarray, steps) -> np.ndarray:
    """Apply the description's pre-processing (the steps this package uses) to ``x``."""
    for step in steps:
        k = step.kwargs
        if step.id == "ensure_dtype":
            x = x.astype(str(k.dtype))
        elif step.id == "scale_linear":
            x = x * np.float32(k.gain) + np.float32(k.offset)
        elif step.id == "fixed_zero_mean_unit_variance":
            assert str(k.axis) == "channel"
            m = np.asarray(k.mean, np.float32).reshape(1, -1, 1, 1)
            s = np.asarray(k.std, np.float32).reshape(1, -1, 1, 1)
            x = (x - m) / s
        else:
            raise AssertionError(f"unexpected pre-processing step {step.id}")
    return x.astype(np.float32)


def _npy(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    return np.load(io.BytesIO(zf.read(name)))


def test_package_passes_the_bioimageio_check(package: Path) -> None:
    from glandseg.models.bioimageio import LICENSE, check_package

    d = check_package(package)
    assert d.type == "model" and str(d.format_version).startswith("0.5")
    assert d.validation_summary.status != "failed"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert d.license == LICENSE == project["license"]["text"]
    assert {str(c.doi) for c in d.cite} == {"10.1016/j.media.2016.08.008",
                                           "10.1007/978-3-319-24574-4_28"}
    assert "0.62 µm/px" in d.description
    (inp,), (out,) = d.inputs, d.outputs
    assert [a.type for a in inp.axes] == ["batch", "channel", "space", "space"]
    assert [a.size.min for a in inp.axes[2:]] == [32, 32]
    assert [a.size.step for a in inp.axes[2:]] == [32, 32]
    assert [str(c) for c in out.axes[1].channel_names] == [
        "background", "gland_interior", "gland_boundary"]
    assert d.weights.onnx.opset_version == 17
    with zipfile.ZipFile(package) as zf:
        readme = zf.read("README.md").decode()
        graph = zf.read("probabilities.onnx")
        assert zf.read("cover.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert "watershed" in readme and "not part of this package" in readme
    assert "0.62 µm/px" in readme and "research use" in readme
    sess = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]  # no encoder means


def test_test_output_is_the_graph_and_glandseg_probabilities(package: Path) -> None:
    from glandseg.infer.predictor import Predictor
    from glandseg.models.bioimageio import check_package

    d = check_package(package)
    (inp,), (out,) = d.inputs, d.outputs
    with zipfile.ZipFile(package) as zf:
        x = _npy(zf, str(inp.test_tensor.source))
        expected = _npy(zf, str(out.test_tensor.source))
        graph = zf.read(str(d.weights.onnx.source))
    assert x.dtype == np.uint8 and x.shape == (1, 3, 256, 256)
    assert expected.dtype == np.float32 and expected.shape == (1, 3, 256, 256)
    last = inp.preprocessing[-1]  # else a consumer casts the normalised values to uint8
    assert last.id == "ensure_dtype" and str(last.kwargs.dtype) == "float32"
    sess = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": _preprocess(x, inp.preprocessing)})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-4)  # softmax over channels
    mine = Predictor.from_name("glas-unet").predict_proba(
        np.ascontiguousarray(x[0].transpose(1, 2, 0)))
    np.testing.assert_allclose(expected[0], mine, atol=1e-4)
    fg = 1.0 - mine[0]
    assert 0.1 < float((fg > 0.5).mean()) < 0.9  # the crop shows glands and stroma


def test_a_package_failing_the_check_is_refused(package: Path, glas_dir: Path,
                                                tmp_path: Path) -> None:
    from glandseg.models.bioimageio import export_bioimageio, package_problems

    # a file changed after packaging: its SHA-256 no longer matches rdf.yaml
    bad = tmp_path / "tampered.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "test_output.npy":
                arr = np.load(io.BytesIO(data))
                buf = io.BytesIO()
                np.save(buf, arr * np.float32(0.5))
                data = buf.getvalue()
            dst.writestr(item, data)
    assert "sha" in package_problems(bad).lower()
    # an export whose description fails the check leaves neither the package nor a temp file
    out = tmp_path / "out" / "bad.zip"
    out.parent.mkdir()
    with pytest.raises(GlandsegError, match="fails the bioimage.io check"):
        export_bioimageio("glas-unet", out, _train_image(glas_dir), crop=64, name="bad: &name")
    assert list(out.parent.iterdir()) == []
    with pytest.raises(GlandsegError, match="test image"):
        export_bioimageio("glas-unet", out, glas_dir / "testA_1.png")


def test_export_onnx_bioimageio_cli(tiny_unet_run: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    """The CLI verb on a run folder whose name has characters a bioimage.io name refuses,
    with a synthetic training-like image (no GlaS needed); its one-line errors."""
    from PIL import Image

    from glandseg.cli import main
    from glandseg.models.bioimageio import check_package

    run = tmp_path / "run.v2"  # the tiny run at working scale 1 (its default is 0.5)
    run.mkdir()
    cfg = json.loads((tiny_unet_run / "config.json").read_text())
    cfg["preprocess"]["scale"] = 1.0
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "best.safetensors").symlink_to(tiny_unet_run / "best.safetensors")
    rng = np.random.default_rng(0)
    img = np.full((100, 130, 3), (230, 190, 220), np.uint8)
    img[20:70, 30:90] = (120, 60, 150)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    sample = tmp_path / "train_1.png"
    Image.fromarray(img).save(sample)
    out = tmp_path / "pkg.zip"
    assert main(["-q", "export-onnx", str(run), "--bioimageio", str(out), "--sample",
                 str(sample), "--crop", "64"]) == 0
    d = check_package(out)
    assert str(d.name) == "GlaS gland segmentation U-Net (glandseg run-v2)"
    assert d.inputs[0].axes[2].size.min == 32
    capsys.readouterr()
    assert main(["-q", "export-onnx", str(run), "--bioimageio", str(tmp_path / "b.zip")]) == 1
    assert "--sample" in capsys.readouterr().err
    assert main(["-q", "export-onnx", str(run), "--bioimageio", str(tmp_path / "b.zip"),
                 "--sample", str(sample), "--crop", "256"]) == 1
    assert "smaller than the 256x256" in capsys.readouterr().err
    assert main(["-q", "export-onnx", str(run), "--bioimageio", str(tmp_path / "b.txt"),
                 "--sample", str(sample)]) == 1
    assert ".zip" in capsys.readouterr().err
    assert main(["-q", "export-onnx", str(tiny_unet_run), "--bioimageio",
                 str(tmp_path / "c.zip"), "--sample", str(sample)]) == 1
    assert "working scale 0.5" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.zip", "run.v2", "train_1.png"]
