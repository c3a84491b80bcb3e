"""Finding samples in the layouts users have: official flat BMP folder, train/ and test/
sub-folders, PNG/TIFF copies, Grade.csv quirks, and folders of a user's own images."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glandseg import GlandsegError
from glandseg.data.discover import discover, orphan_annotations, read_grades, split_of

NAMES = ("train_1", "train_2", "train_10", "testA_1", "testA_2", "testB_1")


def _check_synth(samples: list, ext: str) -> None:
    assert [s.name for s in samples] == ["train_1", "train_2", "train_10", "testA_1", "testA_2", "testB_1"]
    assert Counter(s.split for s in samples) == {"train": 3, "testA": 2, "testB": 1}
    for s in samples:
        assert s.image.suffix == ext and s.anno is not None and s.anno.name == f"{s.name}_anno{ext}"
        assert s.grade in ("benign", "malignant") and isinstance(s.patient, int)


@pytest.mark.parametrize("ext", [".bmp", ".png", ".tif"])
@pytest.mark.parametrize("layout", ["flat", "split"])
def test_layouts_and_formats(make_glas: Callable[..., Path], ext: str, layout: str) -> None:
    root = make_glas(names=NAMES, ext=ext, layout=layout)
    _check_synth(discover(root), ext)


def test_split_layout_grade_csv_in_subfolder(make_glas: Callable[..., Path]) -> None:
    root = make_glas(names=NAMES, layout="split")
    (root / "Grade.csv").rename(root / "train" / "Grade.csv")
    assert all(s.grade for s in discover(root))


def test_splits_filter(make_glas: Callable[..., Path]) -> None:
    root = make_glas(names=NAMES)
    assert [s.name for s in discover(root, splits=("testA", "testB"))] == ["testA_1", "testA_2", "testB_1"]


def test_prefers_bmp_over_copies(make_glas: Callable[..., Path]) -> None:
    root = make_glas(names=("train_1",), ext=".png")
    for p in make_glas(names=("train_1",), ext=".bmp").glob("*.bmp"):
        p.rename(root / p.name)
    (s,) = discover(root)
    assert s.image.suffix == ".bmp" and s.anno is not None and s.anno.suffix == ".bmp"


def test_user_folder_without_annotations(tmp_path: Path) -> None:
    for name in ("slide 2", "slide 10", "a"):
        Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "notes.txt").write_text("x")
    samples = discover(tmp_path)
    assert [s.name for s in samples] == ["a", "slide 2", "slide 10"]
    assert all(s.split == "other" and s.anno is None and s.grade is None for s in samples)


def test_folder_name_gives_split(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "train" / "img1.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "train" / "img1_anno.png")
    (s,) = discover(tmp_path)
    assert s.split == "train" and s.anno is not None


def test_hidden_files_and_overlays_ignored(make_glas: Callable[..., Path]) -> None:
    root = make_glas(names=("train_1",), ext=".png")
    ck = root / ".ipynb_checkpoints"
    ck.mkdir()
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(ck / "train_2.png")
    (root / "._train_1.png").write_bytes(b"\0resource fork")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "train_1_overlay.png")
    assert [s.name for s in discover(root)] == ["train_1"]


def test_orphan_annotation(make_glas: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    root = make_glas(names=("train_1", "train_2"), ext=".png")
    (root / "train_2.png").unlink()
    with caplog.at_level(logging.WARNING):
        assert [s.name for s in discover(root)] == ["train_1"]
    assert "train_2_anno.png: annotation without an image" in caplog.text
    assert orphan_annotations(root) == [root / "train_2_anno.png"]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(GlandsegError, match="no such folder"):
        discover(tmp_path / "missing")
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(GlandsegError, match="no images found"):
        discover(tmp_path)


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
def test_read_grades_line_endings(tmp_path: Path, newline: str) -> None:
    text = newline.join([
        "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)",
        "testA_1,4, benign, adenomatous",
        "testA_12,11, malignant, poorly differentiated",
        "train_3, 2 ,  Malignant ,moderately differentiated",
        "",
    ])
    (tmp_path / "Grade.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_grades(tmp_path / "Grade.csv") == {
        "testA_1": ("benign", 4),
        "testA_12": ("malignant", 11),
        "train_3": ("malignant", 2),
    }


def test_read_grades_without_header_and_bad_rows(tmp_path: Path) -> None:
    p = tmp_path / "g.csv"
    p.write_bytes(b"train_1,3, benign\rtrain_2,3, malignant\r")
    assert read_grades(p) == {"train_1": ("benign", 3), "train_2": ("malignant", 3)}
    p.write_bytes(b"name,patient,grade\rtrain_1,x, benign\r")
    with pytest.raises(GlandsegError, match=r"g.csv:2: patient ID 'x'"):
        read_grades(p)
    p.write_bytes(b"name,patient,grade\rtrain_1\r")
    with pytest.raises(GlandsegError, match=r"g.csv:2: expected"):
        read_grades(p)
    p.write_bytes(b"\r\r")
    with pytest.raises(GlandsegError, match="empty"):
        read_grades(p)


def test_split_of() -> None:
    assert split_of("train_12") == "train"
    assert split_of("testA_1") == "testA"
    assert split_of("testB_20") == "testB"
    assert split_of("testC_1") == "other"
    assert split_of("train_1_extra") == "other"
