"""Image formats: JPEG/WebP/JPEG 2000 images everywhere (data folders too), lossless
annotations only, and the resolution read from TIFF/OME/Aperio/PNG/JPEG metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from glandseg import GlandsegError
from glandseg.cli import main
from glandseg.data.discover import discover
from glandseg.data.io import IMAGE_EXTS, read_image, read_label, read_mpp
from glandseg.report.batch import collect_inputs
from tests.conftest import synth_pair, write_grade_csv

IMG, LAB = synth_pair(40, 48, n_glands=3)


# --- resolution metadata -----------------------------------------------------------------

@pytest.mark.parametrize("res,unit,want", [((1e4 / 0.25, 1e4 / 0.25), "CENTIMETER", 0.25),
                                           ((25400 / 0.5, 25400 / 0.5), "INCH", 0.5),
                                           ((4.0, 4.0), "NONE", None),   # not physical
                                           ((72, 72), "INCH", None)])    # 353 µm/px
def test_tiff_resolution_tags(tmp_path: Path, res, unit: str, want) -> None:
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, IMG, resolution=res, resolutionunit=unit)
    mpp, source = read_mpp(p)
    assert mpp == (None if want is None else pytest.approx(want, rel=1e-6)), source
    if want is not None:
        assert "XResolution" in source


def test_tiff_without_tags(tmp_path: Path) -> None:
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, IMG)
    assert read_mpp(p)[0] is None


@pytest.mark.parametrize("size,unit,want", [(0.5, "µm", 0.5), (250, "nm", 0.25),
                                            (0.000252, "mm", 0.252)])
def test_ome_physical_size(tmp_path: Path, size: float, unit: str, want: float) -> None:
    p = tmp_path / "x.ome.tif"
    tifffile.imwrite(p, IMG, ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit,
                               "PhysicalSizeY": size, "PhysicalSizeYUnit": unit})
    mpp, source = read_mpp(p)
    assert mpp == pytest.approx(want) and "OME" in source


def test_aperio_description(tmp_path: Path) -> None:
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, IMG, description="Aperio Image Library v12.0.5\r\n48x40 -> 48x40 "
                                         "JPEG/RGB Q=70|AppMag = 40|MPP = 0.2527|Filename = x")
    assert read_mpp(p)[0] == pytest.approx(0.2527)


def test_pillow_formats_resolution(tmp_path: Path) -> None:
    cases = {"phys.png": ({"dpi": (25400 / 0.25,) * 2}, 0.25),
             "plain.png": ({}, None),
             "dpi.jpg": ({"dpi": (25400 / 0.5,) * 2}, 0.5),
             "plain.jpg": ({}, None),            # JFIF aspect ratio only
             "default.bmp": ({}, None),          # Pillow writes 96 dpi: not a microscope
             "screen.png": ({"dpi": (72, 72)}, None)}
    for name, (kw, want) in cases.items():
        Image.fromarray(IMG).save(tmp_path / name, **kw)
        mpp, source = read_mpp(tmp_path / name)
        assert mpp == (None if want is None else pytest.approx(want, rel=1e-3)), (name, source)


def test_unreadable_metadata_is_none(tmp_path: Path) -> None:
    p = tmp_path / "bad.tif"
    p.write_bytes(b"II*\x00garbage")
    mpp, why = read_mpp(p)
    assert mpp is None and why


# --- formats -----------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp", ".jp2"])
def test_lossy_images_read(tmp_path: Path, ext: str) -> None:
    assert ext in IMAGE_EXTS
    p = tmp_path / f"x{ext}"
    Image.fromarray(IMG).save(p, quality=95) if ext != ".jp2" else Image.fromarray(IMG).save(p)
    out = read_image(p)
    assert out.shape == IMG.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - IMG).mean() < 12  # lossy, but the same picture


def _jpeg_folder(root: Path, anno_ext: str) -> Path:
    root.mkdir()
    names = ["train_1", "train_2", "testA_1"]
    for i, n in enumerate(names):
        img, lab = synth_pair(40, 48, n_glands=2, seed=i)
        Image.fromarray(img).save(root / f"{n}.jpg", quality=90)
        Image.fromarray(lab).save(root / f"{n}_anno{anno_ext}")
    write_grade_csv(root / "Grade.csv", names)
    return root


def test_jpeg_images_in_a_data_folder(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "glas", ".png")
    samples = discover(root)
    assert [s.name for s in samples] == ["train_1", "train_2", "testA_1"]
    assert all(s.image.suffix == ".jpg" and s.anno.suffix == ".png" for s in samples)
    img, lab = read_image(samples[0].image), read_label(samples[0].anno)
    assert img.shape[:2] == lab.shape and lab.max() == 2
    assert main(["data", "check", str(root)]) == 0


def test_jpeg_annotation_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _jpeg_folder(tmp_path / "glas", ".jpg")
    with pytest.raises(GlandsegError,
                       match=r"testA_1_anno\.jpg: annotation is a JPEG.*PNG or TIFF"):
        discover(root)
    with pytest.raises(GlandsegError, match="JPEG"):
        read_label(root / "train_1_anno.jpg", what="annotation")
    assert main(["data", "check", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert "_anno.jpg" in err and len(err.splitlines()) == 1


def test_lossless_copy_beside_a_jpeg_annotation_is_used(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "glas", ".jpg")
    for n in ("train_1", "train_2", "testA_1"):
        Image.fromarray(read_image(root / f"{n}.jpg")[..., 0] * 0).save(root / f"{n}_anno.png")
    assert all(s.anno.suffix == ".png" for s in discover(root))


def test_lossless_tiff_annotation_accepted(tmp_path: Path) -> None:
    p = tmp_path / "a_anno.tif"
    tifffile.imwrite(p, LAB, compression="zlib")
    np.testing.assert_array_equal(read_label(p), LAB)


def test_predict_collects_jpeg_and_webp(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.jpg", "b.jpeg", "c.webp", "d.png"):
        Image.fromarray(IMG).save(d / name)
    Image.fromarray(LAB).save(d / "a_anno.png")
    assert sorted(p.name for p in collect_inputs([str(d)])) == ["a.jpg", "b.jpeg", "c.webp",
                                                                 "d.png"]
