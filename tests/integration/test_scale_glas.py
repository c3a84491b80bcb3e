"""On real GlaS images (a crop of one validation-patient image): the bundled model on a 2x
copy with its resolution given finds the glands of the original; stain normalisation
brings a stain-shifted image back towards the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glandseg.data import stain
from glandseg.data.dataset import patient_split
from glandseg.data.discover import discover
from glandseg.data.io import read_image
from glandseg.infer.predictor import Predictor
from glandseg.metrics.score import score_pairs
from glandseg.models.config import GLAS_MPP

pytestmark = pytest.mark.glas


@pytest.fixture(scope="module")
def crop(glas_dir: Path) -> np.ndarray:
    _, val = patient_split(discover(glas_dir, splits=("train",)), 0.2, 0)
    return read_image(val[0].image)[:384, :512].copy()


def test_2x_copy_with_input_mpp_matches_the_original(crop: np.ndarray) -> None:
    pred = Predictor.from_name("glas-unet", device="cpu")
    native = pred.predict(crop)
    assert native.max() >= 3
    h, w = crop.shape[:2]
    big = np.array(Image.fromarray(crop).resize((2 * w, 2 * h), Image.BICUBIC))
    labels = pred.predict(big, mpp=GLAS_MPP / 2)
    assert labels.shape == (2 * h, 2 * w)
    n_native, n_big = len(np.unique(native)) - 1, len(np.unique(labels)) - 1
    assert abs(n_big - n_native) <= 1
    truth = np.repeat(np.repeat(native, 2, axis=0), 2, axis=1)  # the original, at 2x
    pooled = score_pairs([("crop", labels, truth)])["other"]["pooled"]
    assert pooled["f1"] >= 0.9 and pooled["object_dice"] >= 0.9, pooled


def test_stain_normalisation_on_a_shifted_glas_image(crop: np.ndarray) -> None:
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(crop)
    hed[..., 0] *= 0.7
    hed[..., 1] *= 1.4
    shifted = (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)
    ref = np.asarray(stain.load_reference()["reinhard"]["mean"])
    dist = {name: np.abs(np.asarray(stain.reinhard_stats(im)["mean"]) - ref).sum()
            for name, im in (("original", crop), ("shifted", shifted),
                             ("normalised", stain.StainNormalizer("reinhard")(shifted)))}
    assert dist["normalised"] < 3 < dist["shifted"], dist
    ref_c = np.asarray(stain.load_reference()["macenko"]["max_concentrations"])
    c = {name: np.asarray(stain.macenko_stats(im)["max_concentrations"])
         for name, im in (("shifted", shifted),
                          ("normalised", stain.StainNormalizer("macenko")(shifted)))}
    assert np.abs(c["normalised"] / ref_c - 1).max() < np.abs(c["shifted"] / ref_c - 1).max()
    assert np.abs(c["normalised"] / ref_c - 1).max() < 0.1, c
