"""``data check``: counts and statistics on good folders, every problem file named on bad
ones, exit status from the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from glandseg import GlandsegError
from glandseg.cli import main
from glandseg.data.check import check_folder

NAMES = ("train_1", "train_2", "train_3", "testA_1", "testA_2", "testB_1")


@pytest.mark.parametrize("ext", [".bmp", ".png", ".tif"])
@pytest.mark.parametrize("layout", ["flat", "split"])
def test_clean_folder(make_glas: Callable[..., Path], ext: str, layout: str) -> None:
    root = make_glas(names=NAMES, ext=ext, layout=layout, n_glands=3)
    r = check_folder(root, workers=1)
    assert r.ok and r.problems == [], r.problems
    assert {k: (v.images, v.annotations) for k, v in r.splits.items()} == {
        "train": (3, 3), "testA": (2, 2), "testB": (1, 1),
    }
    assert r.splits["train"].gland_stats() == (3, 3.0, 3)
    assert r.splits["train"].grades == {"benign": 1, "malignant": 2}
    assert r.splits["train"].patients == {1, 2}
    text = str(r)
    assert "train" in text and "0 errors, 0 warnings: OK" in text
    assert "48x40..50x42" in text  # W x H range of the synthetic train images


def test_every_problem_named(make_glas: Callable[..., Path]) -> None:
    names = tuple(f"train_{i}" for i in range(1, 11))
    root = make_glas(names=names, ext=".png")
    (root / "train_1_anno.png").unlink()  # missing annotation
    (root / "train_2.png").unlink()  # annotation without image
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "train_3_anno.png")  # size mismatch
    data = (root / "train_4.png").read_bytes()
    (root / "train_4.png").write_bytes(data[: len(data) // 2])  # truncated image
    data = (root / "train_5_anno.png").read_bytes()
    (root / "train_5_anno.png").write_bytes(data[:60])  # truncated annotation
    rgb = np.zeros((40 + 5 % 4, 48 + 5 % 3, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(root / "train_6_anno.png")  # colour annotation
    tifffile.imwrite(root / "train_7_anno.tif", np.ones((46, 49), np.float32))
    (root / "train_7_anno.png").unlink()  # float annotation
    Image.fromarray(np.zeros((40 + 7 % 4, 48 + 7 % 3), np.uint8)).save(root / "train_8_anno.png")  # empty
    (root / "junk.bmp").write_bytes(b"BM not really")  # unreadable image, split "other"

    r = check_folder(root, workers=2)
    assert not r.ok
    err = {(p.path.name if p.path else None): p.message for p in r.errors}
    warn = {(p.path.name if p.path else None): p.message for p in r.warnings}
    assert "no annotation" in err["train_1.png"]
    assert "annotation without an image" in err["train_2_anno.png"]
    assert "annotation is 9x9 but its image is" in err["train_3_anno.png"]
    assert "truncated" in err["train_4.png"]
    assert "train_5_anno.png" in err
    assert "colour image" in err["train_6_anno.png"]
    assert "float32" in err["train_7_anno.tif"]
    assert "junk.bmp" in err
    assert "empty annotation" in warn["train_8_anno.png"]
    assert set(err) == {"train_1.png", "train_2_anno.png", "train_3_anno.png", "train_4.png",
                        "train_5_anno.png", "train_6_anno.png", "train_7_anno.tif", "junk.bmp"}
    text = str(r)
    for name in err:
        assert name in text
    assert "NOT USABLE" in text


def test_quick_mode_misses_truncation_but_not_headers(make_glas: Callable[..., Path]) -> None:
    root = make_glas(names=("train_1",), ext=".png")
    data = (root / "train_1.png").read_bytes()
    (root / "train_1.png").write_bytes(data[: len(data) // 2])
    assert check_folder(root, decode_images=False).ok
    assert not check_folder(root, decode_images=True).ok


def test_missing_grade_csv_is_a_warning(make_glas: Callable[..., Path]) -> None:
    root = make_glas(names=NAMES, grades=False)
    r = check_folder(root)
    assert r.ok and r.grades_file is None
    assert any("no Grade.csv" in p.message for p in r.warnings)
    assert r.splits["train"].grades == {} and r.splits["train"].patients == set()


def test_grade_csv_problems(make_glas: Callable[..., Path]) -> None:
    root = make_glas(names=NAMES)
    csv = root / "Grade.csv"
    csv.write_bytes(csv.read_bytes().replace(b"testB_1,", b"testB_9,").replace(b" benign", b" normal", 1))
    r = check_folder(root)
    assert r.ok
    msgs = [p.message for p in r.warnings]
    assert any("testB_1 is not in Grade.csv" in m for m in msgs)
    assert any("neither benign nor malignant" in m for m in msgs)
    csv.write_bytes(b"name,patient,grade\rtrain_1,x, benign\r")
    r = check_folder(root)
    assert not r.ok and r.errors[0].path == csv and "patient ID" in r.errors[0].message


def test_binary_mask_annotation_warned(make_glas: Callable[..., Path]) -> None:
    root = make_glas(names=("train_1",), ext=".png", n_glands=3)
    lab = np.asarray(Image.open(root / "train_1_anno.png"))
    Image.fromarray(((lab > 0) * 255).astype(np.uint8)).save(root / "train_1_anno.png")
    r = check_folder(root)
    assert r.ok and "3 separate regions" in r.warnings[0].message


def test_images_only_folder(tmp_path: Path) -> None:
    for name in ("a", "b"):
        Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(tmp_path / f"{name}.jpg")
    r = check_folder(tmp_path)
    assert r.ok and list(r.splits) == ["other"] and r.splits["other"].images == 2
    assert r.splits["other"].annotations == 0 and r.splits["other"].size_range() == "7x6"
    assert any("usable for predict" in p.message for p in r.warnings)


def test_cli_exit_status_and_json(make_glas: Callable[..., Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = make_glas(names=NAMES, ext=".png")
    assert main(["data", "check", str(root), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "0 errors" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and report["splits"]["train"]["images"] == 3
    (root / "testA_1_anno.png").unlink()
    assert main(["data", "check", str(root), "--quick"]) == 1
    out = capsys.readouterr().out
    assert "testA_1.png" in out and "no annotation" in out
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err


def test_api_errors(tmp_path: Path) -> None:
    with pytest.raises(GlandsegError, match="no such folder"):
        check_folder(tmp_path / "x")
    with pytest.raises(GlandsegError, match="no images"):
        check_folder(tmp_path)
