"""The int8 graph (``--precision int8``): the bundled one is made from the shipped weights,
keeps the glands close to fp32's on GlaS images (on a CPU with int8 dot products), and is
refused cleanly where it cannot run (torch, no graph, a CPU whose int8 kernels saturate);
quantising a graph keeps its outputs and metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import glandseg.weights
from glandseg import GlandsegError
from glandseg.data.io import read_image

pytest.importorskip("onnxruntime")
WEIGHTS = Path(glandseg.weights.__file__).parent


@pytest.fixture
def int8_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this CPU has AVX-512 VNNI (tests of the plumbing, not of the glands)."""
    import glandseg.infer.backend as backend

    monkeypatch.setattr(backend, "_x86_flags", lambda: {"avx2", "avx512_vnni"})


def test_bundled_int8_graph_is_made_from_the_shipped_weights() -> None:
    from glandseg.infer.backend import OnnxBackend
    from glandseg.models.fingerprint import sha256_file

    fp32 = OnnxBackend(WEIGHTS / "glas-unet.onnx")
    q = OnnxBackend(WEIGHTS / "glas-unet.int8.onnx")
    assert q.meta["weights_sha256"] == sha256_file(WEIGHTS / "glas-unet.safetensors"), (
        "glas-unet.int8.onnx is stale: run benchmarks/bench_int8.py --make")
    assert q.precision == "int8" and fp32.precision == "fp32"
    assert q.fingerprint == fp32.fingerprint and q.outputs == fp32.outputs
    assert "training patients" in q.meta["calibration"]


def test_int8_glands_close_to_fp32_on_glas(glas_dir: Path) -> None:
    from glandseg.infer.backend import int8_unsupported
    from glandseg.infer.predictor import Predictor

    if int8_unsupported() is not None:
        pytest.skip("this CPU lacks int8 dot-product instructions (VNNI/AMX): int8 is refused "
                    "here (test_int8_refused_on_a_cpu_whose_kernels_saturate)")
    from glandseg.metrics.glas import ObjectStats
    from glandseg.metrics.score import evaluate_pairs

    p32 = Predictor.from_name("glas-unet", backend="onnx", deblur="auto")
    p8 = Predictor.from_name("glas-unet", backend="onnx", deblur="auto", precision="int8")
    assert p8.backend.precision == "int8"
    pairs = []
    for stem in ("testA_1", "testB_4"):
        image = read_image(glas_dir / f"{stem}.png")
        a, pa = p32.predict_with_proba(image)
        b, pb = p8.predict_with_proba(image)
        assert np.abs(pa - pb).mean() < 0.02
        pairs.append((stem, b, a))
    st = ObjectStats.pool(r.stats for r in evaluate_pairs(pairs))
    assert st.f1 >= 0.9 and st.object_dice >= 0.95, (st.f1, st.object_dice)


def test_int8_refused_on_a_cpu_whose_kernels_saturate(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """x86 without VNNI/AVX-VNNI/AMX: a one-line error, a non-zero exit, nothing written;
    with one of them, or on ARM, or with GLANDSEG_INT8_ANY_CPU=1, the graph opens."""
    import glandseg.infer.backend as backend
    from glandseg.cli import main
    from glandseg.data.io import write_image
    from glandseg.infer.backend import INT8_ANY_CPU_ENV, int8_unsupported, open_backend

    monkeypatch.delenv(INT8_ANY_CPU_ENV, raising=False)
    monkeypatch.setattr(backend.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(backend, "_x86_flags", lambda: {"sse2", "avx2", "fma", "avx512f"})
    assert "int8 dot-product" in int8_unsupported()
    with pytest.raises(GlandsegError, match="use --precision fp32"):
        open_backend("glas-unet", backend="onnx", precision="int8")
    img = tmp_path / "in.png"
    write_image(img, np.full((64, 96, 3), 200, np.uint8))
    assert main(["-q", "predict", str(img), "--out", str(tmp_path / "o"), "--backend", "onnx",
                 "--precision", "int8", "--no-grade"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AVX-512 VNNI" in err[0], err
    assert not (tmp_path / "o" / "in.png").exists()
    assert open_backend("glas-unet", backend="onnx", precision="fp32")[0].precision == "fp32"
    for flags in ({"avx2", "avx_vnni"}, {"avx512f", "avx512_vnni"}, {"amx_int8"}):
        monkeypatch.setattr(backend, "_x86_flags", lambda f=flags: f)
        assert int8_unsupported() is None, flags
    be, _ = open_backend("glas-unet", backend="onnx", precision="int8")
    assert be.precision == "int8"
    monkeypatch.setattr(backend, "_x86_flags", lambda: {"avx2"})
    monkeypatch.setenv(INT8_ANY_CPU_ENV, "1")
    assert int8_unsupported() is None
    monkeypatch.delenv(INT8_ANY_CPU_ENV)
    monkeypatch.setattr(backend.platform, "machine", lambda: "aarch64")
    assert int8_unsupported() is None


def test_cpu_flags_are_read() -> None:
    """The detection reads real flags on this machine (NumPy's, and /proc/cpuinfo on Linux)."""
    import platform

    from glandseg.infer.backend import _x86_flags

    flags = _x86_flags()
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "sse2" in flags, sorted(flags)


def test_int8_refused_where_it_cannot_run(tmp_path: Path, int8_cpu: None) -> None:
    from glandseg.infer.backend import ensure_onnx, open_backend

    with pytest.raises(GlandsegError, match="--precision int8 runs on ONNX Runtime"):
        open_backend("glas-unet", backend="torch", precision="int8")
    with pytest.raises(GlandsegError, match="precision must be one of"):
        ensure_onnx("glas-unet", WEIGHTS / "glas-unet.safetensors", precision="int4")
    # weights without an int8 graph: the error says how to make one
    w = tmp_path / "m.safetensors"
    w.write_bytes((WEIGHTS / "glas-unet.safetensors").read_bytes()[:64])
    with pytest.raises(GlandsegError, match="export-onnx .* --int8 --calibration"):
        ensure_onnx(str(w), w, precision="int8")


def test_quantize_keeps_outputs_and_metadata(tiny_unet_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    import shutil

    from glandseg.infer.backend import OnnxBackend, open_backend
    from glandseg.models.quantize import int8_path, quantize_int8

    run = tmp_path / "run"  # the fixture's folder is shared: work on a copy
    shutil.copytree(tiny_unet_run, run)
    fp32, _ = open_backend(str(run), backend="onnx", threads=1)
    rng = np.random.default_rng(0)
    cal = [rng.standard_normal((1, 3, 64, 96)).astype(np.float32) for _ in range(2)]
    out = quantize_int8(fp32.path, int8_path(fp32.path), cal, source="noise")
    assert out.name == "best.int8.onnx"
    q = OnnxBackend(out, 1)
    assert q.precision == "int8" and q.meta["calibration"] == "noise"
    assert q.meta["weights_sha256"] == fp32.meta["weights_sha256"]
    x = cal[0]
    assert q.run(x).shape == fp32.run(x).shape
    assert np.corrcoef(q.run(x).ravel(), fp32.run(x).ravel())[0, 1] > 0.9
    with pytest.raises(GlandsegError, match="no calibration images"):
        quantize_int8(fp32.path, tmp_path / "q.onnx", [])
    with pytest.raises(GlandsegError, match=r"\(1, 3, h, w\)"):
        quantize_int8(fp32.path, tmp_path / "q.onnx", [np.zeros((3, 64, 64), np.float32)])
    assert not (tmp_path / "q.onnx").exists()


def test_cli_export_int8_then_predict(tiny_unet_run: Path, tmp_path: Path,
                                     int8_cpu: None) -> None:
    """`export-onnx RUN --int8 --calibration IMAGES` writes RUN/best.int8.onnx, which
    `predict --precision int8` then uses; --int8 without images is a one-line error."""
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    import shutil

    from glandseg.cli import main
    from glandseg.data.io import write_image

    run = tmp_path / "run"
    shutil.copytree(tiny_unet_run, run)
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(tmp_path / f"cal{i}.png", rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    assert main(["export-onnx", str(run), "--int8"]) != 0
    assert not (run / "best.int8.onnx").exists()
    assert main(["export-onnx", str(run), "--int8", "--calibration",
                 str(tmp_path / "cal*.png")]) == 0
    assert (run / "best.int8.onnx").is_file()
    assert main(["-q", "predict", str(tmp_path / "cal0.png"), "--out", str(tmp_path / "o"),
                 "--model", str(run), "--precision", "int8", "--no-grade"]) == 0
    assert (tmp_path / "o" / "cal0.png").is_file()
