"""Reading and writing images and label images: dtypes, clear errors, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from glandseg import GlandsegError
from glandseg.data import io


def _labels(dtype: type, top: int) -> np.ndarray:
    lab = np.zeros((20, 30), dtype)
    lab[2:8, 3:9] = 1
    lab[10:18, 12:25] = top
    return lab


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_read_label_8bit(tmp_path: Path, ext: str) -> None:
    lab = _labels(np.uint8, 200)
    p = tmp_path / f"a_anno{ext}"
    Image.fromarray(lab).save(p)
    out = io.read_label(p)
    assert out.dtype == np.int32 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, lab)


def test_read_label_16bit_png_and_tiff(tmp_path: Path) -> None:
    lab = _labels(np.uint16, 40000)
    io.write_label(tmp_path / "a.png", lab)
    io.write_label(tmp_path / "a.tif", lab)
    for name in ("a.png", "a.tif"):
        out = io.read_label(tmp_path / name)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, lab)


def test_read_label_palette_keeps_indices(tmp_path: Path) -> None:
    lab = _labels(np.uint8, 5)
    im = Image.fromarray(lab, mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, i, 255 - i)])
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(io.read_label(tmp_path / "p.png"), lab)


def test_read_label_grey_rgb_accepted(tmp_path: Path) -> None:
    lab = _labels(np.uint8, 3)
    Image.fromarray(np.repeat(lab[..., None], 3, axis=2)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(io.read_label(tmp_path / "g.png"), lab)


def test_rgb_annotation_rejected_naming_file(tmp_path: Path) -> None:
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[2:5, 2:5] = (255, 0, 0)
    p = tmp_path / "colour_anno.png"
    Image.fromarray(rgb).save(p)
    with pytest.raises(GlandsegError, match="colour_anno.png.*colour image"):
        io.read_label(p)


def test_float_annotation_rejected(tmp_path: Path) -> None:
    p = tmp_path / "f_anno.tif"
    tifffile.imwrite(p, np.ones((8, 8), np.float32))
    with pytest.raises(GlandsegError, match="f_anno.tif.*float32"):
        io.read_label(p)


def test_truncated_png_named(tmp_path: Path) -> None:
    p = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(GlandsegError, match=r"cut\.png.*(unreadable or truncated)"):
        io.read_image(p)
    with pytest.raises(GlandsegError, match=r"cut\.png"):
        io.read_label(p)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(GlandsegError, match="nope.png: file not found"):
        io.read_image(tmp_path / "nope.png")
    (tmp_path / "junk.bmp").write_bytes(b"not an image at all")
    with pytest.raises(GlandsegError, match="junk.bmp"):
        io.read_image(tmp_path / "junk.bmp")
    with pytest.raises(GlandsegError, match="junk.bmp"):
        io.image_size(tmp_path / "junk.bmp")


def test_read_image_modes(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = io.read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 1], grey)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 9
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert io.read_image(tmp_path / "a.png").shape == (3, 4, 3)
    pal = Image.fromarray(np.full((3, 4, 3), (10, 200, 30), np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE
    )
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "p.png")[0, 0], (10, 200, 30))
    assert io.image_size(tmp_path / "p.png") == (3, 4)


def test_write_read_image_roundtrip(tmp_path: Path) -> None:
    img = np.random.default_rng(1).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    for ext in (".png", ".tif", ".bmp"):
        io.write_image(tmp_path / f"x{ext}", img)
        np.testing.assert_array_equal(io.read_image(tmp_path / f"x{ext}"), img)
        assert io.image_size(tmp_path / f"x{ext}") == (7, 9)


def test_write_label_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        io.write_label(tmp_path / "a.png", np.zeros((2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="negative"):
        io.write_label(tmp_path / "a.png", -np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="integer"):
        io.write_label(tmp_path / "a.png", np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="65535"):
        io.write_label(tmp_path / "a.png", np.full((2, 2), 70000, np.int32))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "labels.png"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("crash while writing")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    io.write_text(target, "old")
    with pytest.raises(TypeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("new")
            raise TypeError
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_atomic_write_ordinary_permissions(tmp_path: Path) -> None:
    io.write_text(tmp_path / "r.txt", "x")
    mode = stat.S_IMODE(os.stat(tmp_path / "r.txt").st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_as_rgb8_is_the_one_pixel_conversion() -> None:
    """read_image and the slide reader share as_rgb8: grey/1-channel/alpha/16-bit → uint8 RGB."""
    import numpy as np
    import pytest

    from glandseg import GlandsegError
    from glandseg.data.io import as_rgb8

    grey = np.arange(12, dtype=np.uint16).reshape(3, 4) * 257
    out = as_rgb8(grey, "x.tif")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8 and (out[..., 2] == np.arange(12).reshape(3, 4)).all()
    assert as_rgb8(np.zeros((2, 2, 1), np.uint8), "x").shape == (2, 2, 3)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba.setflags(write=False)
    out = as_rgb8(rgba, "x")
    assert out.shape == (2, 2, 3) and out.flags.writeable
    with pytest.raises(GlandsegError, match="x.tif: unsupported image dtype"):
        as_rgb8(np.zeros((2, 2), np.float32), "x.tif")
    with pytest.raises(GlandsegError, match="expected an RGB image"):
        as_rgb8(np.zeros((2, 2, 2), np.uint8), "x")
