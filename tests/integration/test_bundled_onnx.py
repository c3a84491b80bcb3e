"""The bundled U-Net's ONNX graph (the CPU default) is the shipped weights' graph and gives
the torch network's probabilities and glands on real GlaS images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import glandseg
import glandseg.weights
from glandseg.data.io import read_image

pytestmark = pytest.mark.glas
WEIGHTS = Path(glandseg.weights.__file__).parent


def test_bundled_graph_is_made_from_the_shipped_weights() -> None:
    pytest.importorskip("onnxruntime")
    from glandseg.infer.backend import OnnxBackend
    from glandseg.models.fingerprint import file_fingerprint, sha256_file

    w = WEIGHTS / "glas-unet.safetensors"
    graph = OnnxBackend(WEIGHTS / "glas-unet.onnx")
    assert graph.meta["weights_sha256"] == sha256_file(w), (
        "glas-unet.onnx is stale: run `glandseg export-onnx glas-unet`")
    assert graph.fingerprint == file_fingerprint(w)
    assert graph.outputs == ["logits", "enc0", "enc1", "enc2", "enc3", "enc4"]


@pytest.mark.parametrize("stem", ["testA_1", "testB_4"])
def test_onnx_and_torch_give_the_same_glands_on_glas(stem: str, glas_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    image = read_image(next(glas_dir.glob(f"{stem}.*")))
    po = glandseg.Predictor.from_name("glas-unet", device="cpu", backend="onnx", deblur="auto")
    pt = glandseg.Predictor.from_name("glas-unet", device="cpu", backend="torch", deblur="auto")
    lo, prob_o = po.predict_with_proba(image)
    lt, prob_t = pt.predict_with_proba(image)
    np.testing.assert_allclose(prob_o, prob_t, atol=1e-4)
    s = glandseg.score(lo, lt)
    assert s["f1"] == 1.0 and s["object_dice"] >= 0.999, s
    from glandseg.grade.features import encoder_features

    fo, ft = encoder_features(po, image), encoder_features(pt, image)
    np.testing.assert_allclose(list(fo.values()), list(ft.values()), atol=1e-4)
