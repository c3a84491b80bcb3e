"""Benign/malignant grading: features, the JSON grader, metrics, patient-wise fitting,
grading with a segmentation model, ``glandseg grade`` and grades in ``glandseg predict``."""

from __future__ import annotations

import ast
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glandseg import GlandsegError
from glandseg.grade.classifier import BUNDLED_PATH, Grader, Segmentation, binary_metrics
from glandseg.grade.features import (
    MORPHOMETRIC_NAMES,
    encoder_feature_names,
    model_fingerprint,
    morphometric_features,
)

PKG = Path(__file__).resolve().parents[2] / "glandseg"


def _tissue(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """Pink, slightly noisy H&E-like background ``uint8 (h, w, 3)``."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[...] = (225, 160, 200)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ----------------------------------------------------------------------------- features


def test_morphometrics_count_size_and_shape() -> None:
    h, w = 120, 160
    img = _tissue(h, w)
    discs = np.zeros((h, w), np.int32)
    discs[_disc(h, w, 40, 40, 20)] = 1
    discs[_disc(h, w, 80, 110, 20)] = 2
    f = morphometric_features(img, discs)
    assert list(f) == list(MORPHOMETRIC_NAMES)
    assert f["n_glands"] == 2
    assert f["glands_per_mpx"] == pytest.approx(2 / (h * w / 1e6))
    assert f["gland_fraction"] == pytest.approx((discs > 0).mean())
    assert f["solidity_mean"] > 0.95 and f["form_factor_mean"] < 1.3
    # a cross-shaped gland of similar area: less solid, more irregular
    cross = np.zeros((h, w), np.int32)
    cross[50:70, 30:130] = 1
    cross[10:110, 70:90] = 1
    g = morphometric_features(img, cross)
    assert g["n_glands"] == 1
    assert g["solidity_mean"] < f["solidity_mean"] - 0.2
    assert g["form_factor_mean"] > f["form_factor_mean"] + 0.5
    big = np.zeros((h, w), np.int32)
    big[_disc(h, w, 60, 80, 45)] = 1
    assert morphometric_features(img, big)["log_area_mean"] > f["log_area_mean"] + 1


def test_morphometrics_lumen_and_epithelium() -> None:
    h, w = 120, 160
    img = _tissue(h, w)
    labels = np.zeros((h, w), np.int32)
    labels[_disc(h, w, 60, 80, 40)] = 1
    lumen = _disc(h, w, 60, 80, 20)
    img[lumen] = 250  # white lumen
    ring = _disc(h, w, 60, 80, 40) & ~_disc(h, w, 60, 80, 30)
    img[ring] = (70, 40, 140)  # haematoxylin-dark epithelium (nuclei)
    f = morphometric_features(img, labels)
    assert f["lumen_fraction"] == pytest.approx(lumen.sum() / (labels > 0).sum(), abs=0.03)
    assert f["epithelium_fraction"] == pytest.approx(ring.sum() / (labels > 0).sum(), abs=0.05)
    # without a lumen the share is ~0
    img2 = _tissue(h, w)
    assert morphometric_features(img2, labels)["lumen_fraction"] < 0.05


def test_morphometrics_without_glands_are_nan_where_undefined() -> None:
    img = _tissue()
    f = morphometric_features(img, np.zeros(img.shape[:2], np.int32))
    assert f["n_glands"] == 0 and f["gland_fraction"] == 0
    assert math.isnan(f["solidity_mean"]) and math.isnan(f["log_area_mean"])
    with pytest.raises(ValueError, match="labels"):
        morphometric_features(img, np.zeros((3, 3), np.int32))


# ------------------------------------------------------------------------------ grader


def _grader(n: int = 3, **kw) -> Grader:
    d = dict(features=tuple(f"f{i}" for i in range(n)), mean=np.arange(n, dtype=float),
             scale=np.ones(n) * 2, coef=np.linspace(-1, 1, n), intercept=0.25,
             segmentation=Segmentation("m", "ab" * 32), feature_set="morphometrics")
    d.update(kw)
    return Grader(**d)


def test_grader_json_round_trip_and_probability(tmp_path: Path) -> None:
    g = _grader()
    g.save(tmp_path / "g.json")
    from glandseg.grade.classifier import load_grader

    h = load_grader(tmp_path / "g.json")
    x = np.array([[1.0, 5.0, -3.0], [0.0, 1.0, 2.0]])
    z = (x - g.mean) / g.scale
    want = 1 / (1 + np.exp(-(z @ g.coef + g.intercept)))
    np.testing.assert_allclose(h.probability(x), want)
    # NaN (undefined feature) -> the training mean (z = 0)
    p_nan = h.probability(np.array([[np.nan, 1.0, 2.0]]))[0]
    p_mean = h.probability(np.array([[0.0, 1.0, 2.0]]))[0]
    assert p_nan == pytest.approx(p_mean)
    assert h.label(0.7) == "malignant" and h.label(0.2) == "benign"
    assert h.vector({"f0": 1, "f1": 2, "f2": 3, "other": 9}).tolist() == [1, 2, 3]


@pytest.mark.parametrize("change, msg", [
    ({"coef": [1.0, 2.0]}, "coef has 2 values"),
    ({"scale": [1.0, 0.0, 1.0]}, "scale must be positive"),
    ({"format": "other"}, "not a glandseg grader"),
    ({"extra_key": 1}, "unknown key"),
    ({"threshold": 1.5}, "threshold"),
    ({"segmentation": {"model": "x"}}, "segmentation"),
])
def test_grader_file_errors_name_the_file(tmp_path: Path, change: dict, msg: str) -> None:
    from glandseg.grade.classifier import load_grader

    d = _grader().to_dict()
    d.update(change)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(GlandsegError, match=msg) as e:
        load_grader(p)
    assert str(p) in str(e.value)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(GlandsegError, match="unreadable grader"):
        load_grader(tmp_path / "junk.json")


def test_binary_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        roc_auc_score,
    )

    rng = np.random.default_rng(1)
    y = rng.random(40) < 0.6
    p = np.clip(0.3 * y + rng.random(40) * 0.7, 0, 1)
    p[:4] = 0.5  # ties
    truth = ["malignant" if v else "benign" for v in y]
    m = binary_metrics(truth, p.tolist())
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    cm = confusion_matrix(y, p >= 0.5)
    assert m["confusion"]["benign"]["malignant"] == cm[0, 1]
    assert m["confusion"]["malignant"]["benign"] == cm[1, 0]
    assert m["majority"]["class"] == ("malignant" if y.sum() * 2 > y.size else "benign")
    assert m["majority"]["balanced_accuracy"] == 0.5
    b = binary_metrics(["benign"] * 3 + ["malignant"], [0.1, 0.2, 0.3, 0.9],
                       majority="malignant")
    assert b["majority"]["accuracy"] == 0.25 and b["balanced_accuracy"] == 1.0


def test_fit_matches_scikit_learn_pipeline_and_cv_is_patient_wise() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from glandseg.grade.fit import _fit_one, _proba, cross_validate

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    y = X[:, 0] + 0.3 * rng.normal(size=30) > 0
    names = ["a", "b", "c", "d"]
    params = _fit_one(X, y, names, C=0.5)
    sc = StandardScaler().fit(X)
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=10000).fit(
        sc.transform(X), y)
    np.testing.assert_allclose(_proba(params, X), ref.predict_proba(sc.transform(X))[:, 1],
                               atol=1e-6)
    # a feature that only identifies the patient (grade = patient) must not be learnt
    # across patients: leave-one-patient-out gives chance or worse, never perfection
    groups = np.repeat(np.arange(6), 5)
    yp = groups % 2 == 0
    Xp = np.eye(6)[groups] + 0.01 * rng.normal(size=(30, 6))
    p = cross_validate(Xp, yp, groups, [f"p{i}" for i in range(6)], C=1.0)
    assert binary_metrics(["malignant" if v else "benign" for v in yp],
                          p.tolist())["balanced_accuracy"] <= 0.5
    # ...while a real signal is found
    Xs = np.c_[yp + 0.3 * rng.normal(size=30), rng.normal(size=30)]
    p = cross_validate(Xs, yp, groups, ["s", "n"], C=1.0)
    assert binary_metrics(["malignant" if v else "benign" for v in yp],
                          p.tolist())["balanced_accuracy"] >= 0.9


def test_block_weights_balance_the_two_sources() -> None:
    from glandseg.grade.fit import block_weights

    w = block_weights(["a", "b", "enc0_0", "enc0_1", "enc0_2", "enc0_3"])
    assert w.tolist() == pytest.approx([math.sqrt(2)] * 2 + [2.0] * 4)
    assert block_weights(["a", "b"]).tolist() == [1.0, 1.0]


def test_grade_imports_only_go_down() -> None:
    allowed = {"grade", "infer", "models", "data", "metrics"}
    bad = []
    for path in (PKG / "grade").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                parts = n.split(".")
                if parts[0] == "glandseg" and len(parts) > 1 and parts[1] not in allowed:
                    bad.append(f"{path.name}: {n}")
    assert not bad


# ---------------------------------------------------------- grading with a real network


@pytest.fixture
def tiny_run(tiny_unet_run: Path) -> Path:
    return tiny_unet_run


def _fit_like_grader(run: Path, features: tuple[str, ...], fingerprint: str) -> Grader:
    n = len(features)
    rng = np.random.default_rng(0)
    return Grader(features=features, mean=np.zeros(n), scale=np.ones(n),
                  coef=rng.normal(size=n) * 0.1, intercept=0.0,
                  segmentation=Segmentation(str(run), fingerprint), feature_set="both")


def test_image_grader_with_encoder_features(tiny_run: Path, tmp_path: Path) -> None:
    from glandseg.grade.engine import ImageGrader
    from glandseg.grade.features import encoder_features
    from glandseg.infer.predictor import Predictor

    pred = Predictor.from_name(str(tiny_run), device="cpu")  # ONNX Runtime on the CPU
    torch_pred = Predictor.from_name(str(tiny_run), device="cpu", backend="torch")
    assert (pred.backend.name, torch_pred.backend.name) == ("onnx", "torch")
    img = _tissue(96, 128)
    enc = encoder_features(pred, img)
    chans = list(torch_pred.model.encoder.feature_info.channels())
    assert list(enc) == encoder_feature_names(chans) and len(enc) == sum(chans)
    # the same features from either backend, and the same weights fingerprint
    enc_t = encoder_features(torch_pred, img)
    assert np.allclose(list(enc.values()), list(enc_t.values()), atol=1e-4)
    assert pred.fingerprint == torch_pred.fingerprint == model_fingerprint(torch_pred.model)
    # tiled pooling of a larger image: finite and close to the one-piece pooling
    big = _tissue(200, 260, seed=3)
    one, tiled = encoder_features(pred, big), encoder_features(pred, big, max_side=128)
    a, b = np.array(list(one.values())), np.array(list(tiled.values()))
    assert np.all(np.isfinite(b)) and np.corrcoef(a, b)[0, 1] > 0.9
    fp = pred.fingerprint
    g = _fit_like_grader(tiny_run, tuple(MORPHOMETRIC_NAMES) + tuple(enc), fp)
    ig = ImageGrader.load(g, pred)
    assert ig.predictor is pred and ig.shares(pred)
    r = ig.grade(img)
    assert r.grade in ("benign", "malignant") and 0 <= r.probability <= 1
    x = g.vector({**morphometric_features(img, pred.predict(img)), **enc})
    assert r.probability == pytest.approx(float(g.probability(x)[0]))
    # other weights than the grader's: refused with the fix in the message
    stale = _fit_like_grader(tiny_run, tuple(MORPHOMETRIC_NAMES), "0" * 64)
    with pytest.raises(GlandsegError, match="refit the grader"):
        ImageGrader.load(stale, pred)


def _grader_file(tiny_run: Path, tmp_path: Path) -> Path:
    from glandseg.infer.predictor import Predictor

    pred = Predictor.from_name(str(tiny_run), device="cpu")
    g = _fit_like_grader(tiny_run, tuple(MORPHOMETRIC_NAMES), pred.fingerprint)
    g = Grader(**{**g.__dict__, "feature_set": "morphometrics", "source": ""})
    g.save(tmp_path / "grader.json")
    return tmp_path / "grader.json"


def _images(folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img_{i}.png"
        Image.fromarray(_tissue(64, 96, seed=i)).save(p)
        out.append(p)
    return out


def test_grade_cli_writes_grades_csv_and_never_overwrites(tiny_run: Path, tmp_path: Path,
                                                          capsys) -> None:
    from glandseg.cli import main

    grader = _grader_file(tiny_run, tmp_path)
    imgs = _images(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["-q", "grade", *map(str, imgs), "--out", str(out), "--grader", str(grader),
                 "--device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert [r["image"] for r in rows] == ["img_0", "img_1"]
    assert all(r["grade"] in ("benign", "malignant")
               and 0 <= float(r["grade_probability"]) <= 1 for r in rows)
    assert "graded 2 image(s)" in capsys.readouterr().out
    # ours: refused without --overwrite, replaced with it
    assert main(["-q", "grade", str(imgs[0]), "--out", str(out), "--grader", str(grader)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["-q", "grade", str(imgs[0]), "--out", str(out), "--grader", str(grader),
                 "--overwrite", "--device", "cpu"]) == 0
    assert len(list(csv.DictReader((out / "grades.csv").open()))) == 1
    # not ours (edited): never overwritten
    (out / "grades.csv").write_text("mine\n")
    assert main(["-q", "grade", str(imgs[0]), "--out", str(out), "--grader", str(grader),
                 "--overwrite"]) == 1
    assert (out / "grades.csv").read_text() == "mine\n"
    assert "not written by glandseg" in capsys.readouterr().err


def test_predict_adds_grades_to_geojson_images_csv_and_index(tiny_run: Path,
                                                             tmp_path: Path) -> None:
    from glandseg.cli import main
    from tests.unit.test_html_report import parse_html

    grader = _grader_file(tiny_run, tmp_path)
    imgs = _images(tmp_path / "in", 3)
    out = tmp_path / "pred"
    assert main(["-q", "predict", *map(str, imgs), "--out", str(out), "--model", str(tiny_run),
                 "--grader", str(grader), "--device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "images.csv").open()))
    assert [r["image"] for r in rows] == ["img_0", "img_1", "img_2"]
    assert all(r["grade"] in ("benign", "malignant") for r in rows)
    gj = json.loads((out / "img_1.geojson").read_text())
    assert gj["properties"]["grade"] == rows[1]["grade"]
    assert gj["properties"]["grade_probability"] == pytest.approx(
        float(rows[1]["grade_probability"]))
    page = parse_html((out / "index.html").read_text())
    assert len(page.elements("div", "card")) == 3
    assert {s for s in page.srcs if s.endswith("_overlay.png")} == {
        f"./img_{i}_overlay.png" for i in range(3)}
    # an images.csv that glandseg did not write stops the next run before anything
    (out / "images.csv").write_text("hand-made\n")
    assert main(["-q", "predict", str(imgs[0]), "--out", str(out / "x"), "--model",
                 str(tiny_run), "--no-grade", "--device", "cpu"]) == 0
    assert main(["-q", "predict", *map(str, imgs), "--out", str(out), "--model", str(tiny_run),
                 "--no-grade", "--overwrite", "--device", "cpu"]) == 1
    assert (out / "images.csv").read_text() == "hand-made\n"


def test_bundled_grader_fits_the_bundled_segmentation_model() -> None:
    """The bundled grader must have been fit with the bundled model's exact weights (refit
    with python -m glandseg.grade.fit after replacing glas-unet)."""
    if not BUNDLED_PATH.is_file():
        pytest.skip(f"no bundled grader at {BUNDLED_PATH}")
    from glandseg.grade.classifier import load_grader
    from glandseg.models.store import load

    g = load_grader()
    model, _ = load(g.segmentation.model)
    assert model_fingerprint(model) == g.segmentation.fingerprint, (
        "the bundled grader was fit on other segmentation weights: refit it "
        "(python -m glandseg.grade.fit --data GLAS --out glandseg/grade/weights/glas-grade.json)")
    assert g.fit["cv"].startswith("leave-one-patient-out")
    assert g.fit["n_images"] == 85


def test_choose_threshold_maximises_out_of_fold_balanced_accuracy() -> None:
    from glandseg.grade.fit import choose_threshold

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    # separable below 0.5: the threshold moves into the gap (0.2, 0.3), in log-odds middle
    p = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.6, 0.8, 0.9])
    t, b = choose_threshold(p, y)
    assert 0.2 < t < 0.3 and b == 1.0
    mid = 1 / (1 + np.exp(-(np.log(0.2 / 0.8) + np.log(0.3 / 0.7)) / 2))
    assert t == pytest.approx(mid)
    # not separable: the best balanced accuracy, the widest gap among equals
    p2 = np.array([0.1, 0.2, 0.7, 0.35, 0.4, 0.6, 0.8, 0.9])
    t2, b2 = choose_threshold(p2, y)
    pred = p2 >= t2
    assert b2 == pytest.approx(0.5 * (pred[y].mean() + (~pred[~y]).mean()))
    assert b2 == pytest.approx(0.875)
    assert choose_threshold(np.full(8, 0.7), y) == (0.5, 0.5)


def test_fit_cli_threshold_option_is_checked(tmp_path: Path) -> None:
    from glandseg.grade.fit import main

    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "g.json"), "--threshold", "2"])
    assert e.value.code == 2 and not (tmp_path / "g.json").exists()


def test_fit_grader_uses_the_chosen_candidates_out_of_fold_threshold(
        tiny_run: Path, tmp_path: Path) -> None:
    """fit_grader end to end on 12 synthetic images of 6 patients: the saved threshold is
    :func:`choose_threshold` of the chosen candidate's out-of-fold probabilities (the ones
    the candidate was chosen by), and a given threshold is kept as given."""
    from glandseg.data.discover import discover
    from glandseg.grade.fit import choose_threshold, collect_features, fit_grader, select
    from glandseg.infer.predictor import Predictor
    from tests.conftest import make_glas_folder

    data = make_glas_folder(tmp_path / "glas", names=[f"train_{i}" for i in range(1, 13)],
                            size=(64, 64), ext=".png")
    kw = dict(model=str(tiny_run), cache=tmp_path / "cache", feature_sets=("encoder-last",),
              c_grid=(0.1, 1.0), device="cpu", progress=False)
    g = fit_grader(data, **kw)
    samples = [s for s in discover(data, splits=("train",))]
    rows = collect_features(samples, Predictor.from_name(str(tiny_run), device="cpu"),
                            tmp_path / "cache", progress=False)
    _, best = select(rows, samples, ("encoder-last",), (0.1, 1.0))
    y = np.array([s.grade == "malignant" for s in samples])
    assert g.threshold == pytest.approx(choose_threshold(best["oof"], y)[0])
    assert g.fit["threshold"]["value"] == g.threshold != 0.5  # here: 0.589
    assert g.feature_set == "encoder-last" and all(f.startswith("enc4_") for f in g.features)
    assert fit_grader(data, threshold=0.4, **kw).threshold == 0.4
