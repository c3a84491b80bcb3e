"""Hostile input and faults around ``predict``, ``score`` and ``grade``: special files and
broken links as inputs, EXIF orientation, unbounded upscaling, a full disk, a read-only
output folder, temporary files of a killed run, CSV formula injection, script in file
names, untrained models, scoring a whole GlaS folder. A fake predictor keeps them fast."""

from __future__ import annotations

import csv
import errno
import importlib
import json
import logging
import os
import pkgutil
import re
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import glandseg.cli
from glandseg import GlandsegError
from glandseg.cli import main
from glandseg.data import io as gio
from glandseg.data.io import csv_safe, file_problem, image_size, read_image, temp_target
from glandseg.data.slide import is_large
from glandseg.engine import predict as engine
from glandseg.report import batch
from glandseg.report import outputs as o
from tests.conftest import synth_pair

# every verb module imported now: demo and evaluate bind predict_cmd.make_predictor when
# imported (lazily, by the CLI's first run), which must not happen while a test patches it
for _verb in pkgutil.iter_modules(glandseg.cli.__path__):
    if _verb.name.endswith("_cmd"):
        importlib.import_module(f"glandseg.cli.{_verb.name}")


class FakePredictor:
    """Labels = connected dark rectangles of :func:`synth_pair`, ids shifted by ``shift``."""

    def __init__(self, shift: int = 0) -> None:
        self.shift, self.calls = shift, 0

    def predict(self, image: np.ndarray, **kw) -> np.ndarray:
        from scipy import ndimage as ndi

        self.calls += 1
        lab, _ = ndi.label(image.mean(axis=2) < 150)
        return np.where(lab > 0, lab + self.shift, 0).astype(np.int32)


class ScaledPredictor(FakePredictor):
    """A fake with a resolution, like :class:`glandseg.infer.predictor.Predictor`."""

    mpp = 0.62005

    def zoom(self, mpp: float | None = None) -> float:
        return (mpp or self.mpp) / self.mpp

    def resolution_of(self, path, mpp: float | None = None) -> float:
        return mpp or self.mpp


def _images(folder: Path, stems: list[str], size: tuple[int, int] = (40, 48)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, stem in enumerate(stems):
        img, _ = synth_pair(*size, n_glands=2 + i % 2, seed=i)
        Image.fromarray(img).save(folder / f"{stem}.png")
        paths.append(folder / f"{stem}.png")
    return paths


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------ special files and links


def test_file_problem_tells_the_kinds_apart(tmp_path: Path) -> None:
    good = _images(tmp_path, ["a"])[0]
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "ok_link.png").symlink_to(good)
    assert file_problem(good) is None and file_problem(tmp_path / "ok_link.png") is None
    assert "named pipe (FIFO)" in file_problem(fifo)
    assert "broken symbolic link" in file_problem(tmp_path / "dangling.png")
    assert "gone.png" in file_problem(tmp_path / "dangling.png")
    assert "symbolic link loop" in file_problem(tmp_path / "loop.png")
    assert "folder" in file_problem(tmp_path)
    assert "not found" in file_problem(tmp_path / "nope.png")


def _never_blocks(fn, fifo: Path, seconds: float = 20.0):
    """Run ``fn()`` in a thread; if it blocks on the FIFO, unblock it and fail."""
    box: dict = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():  # open a writer so that the blocked open() returns, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail(f"{fn} blocked on the FIFO {fifo}")
    return box


def test_fifo_input_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)
    assert _never_blocks(lambda: is_large(fifo), fifo)["value"] is False
    box = _never_blocks(lambda: batch.collect_inputs([str(fifo)]), fifo)
    assert isinstance(box.get("error"), GlandsegError)
    assert "in.png" in str(box["error"]) and "named pipe" in str(box["error"])
    box = _never_blocks(lambda: read_image(fifo), fifo)
    assert isinstance(box.get("error"), GlandsegError) and "named pipe" in str(box["error"])


@pytest.mark.parametrize("kind", ["dangling", "loop", "fifo"])
def test_predict_names_a_bad_input_and_fails(tmp_path: Path, kind: str, capsys,
                                             monkeypatch) -> None:
    import glandseg.cli.predict_cmd as pc

    good = _images(tmp_path / "in", ["good"])[0]
    bad = tmp_path / "in" / "bad.png"
    if kind == "dangling":
        bad.symlink_to(tmp_path / "missing.png")
    elif kind == "loop":
        bad.symlink_to(bad)
    else:
        os.mkfifo(bad)

    def no_model(args):
        raise AssertionError("the model was loaded for a run that must stop first")

    monkeypatch.setattr(pc, "make_predictor", no_model)
    out = tmp_path / "out"
    assert main(["-q", "predict", str(good), str(bad), "--out", str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(bad) in line
    assert {"dangling": "broken symbolic link", "loop": "link loop",
            "fifo": "named pipe"}[kind] in line
    assert not out.exists()


def test_failure_line_names_the_path_once() -> None:
    assert batch.failure_line("/x/a.png", "/x/a.png: cannot read") == "failed: /x/a.png: cannot read"
    assert batch.failure_line("/x/a.png", "model error") == "failed: /x/a.png: model error"


def test_predict_prints_a_failed_path_once(tmp_path: Path, monkeypatch, capsys) -> None:
    import glandseg.cli.predict_cmd as pc

    good = _images(tmp_path / "in", ["good"])[0]
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    monkeypatch.setattr(pc, "make_predictor", lambda args: FakePredictor())
    assert main(["-q", "predict", str(good), str(broken), "--out", str(tmp_path / "out"),
                 "--no-grade"]) == 1
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("failed:"))
    assert line.count(str(broken)) == 1, line


# ------------------------------------------------------------------ EXIF orientation


def _exif_jpeg(path: Path, orientation: int = 6) -> None:
    """Stored 384 wide x 256 high, white, a black 40 px square at the stored top-left."""
    stored = np.full((256, 384, 3), 255, np.uint8)
    stored[:40, :40] = 0
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif)


def test_read_image_uses_the_displayed_orientation(tmp_path: Path) -> None:
    p = tmp_path / "turned.jpg"
    _exif_jpeg(p)
    img = read_image(p)
    assert img.shape == (384, 256, 3)  # displayed: 256 wide, 384 high
    assert image_size(p) == (384, 256)
    # orientation 6: the viewer turns the stored image 90° clockwise, so the stored
    # top-left corner is shown at the top-right
    assert img[:30, -30:].mean() < 40 and img[:30, :30].mean() > 215
    plain = tmp_path / "plain.jpg"
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(plain)
    assert read_image(plain).shape == (10, 20, 3) and image_size(plain) == (10, 20)


def test_predict_outputs_are_in_the_displayed_frame(tmp_path: Path) -> None:
    p = tmp_path / "in" / "turned.jpg"
    p.parent.mkdir()
    _exif_jpeg(p)
    out = tmp_path / "out"
    rep = engine.predict_files([p], out, FakePredictor(), progress=False)
    assert rep.n_ok == 1 and rep.n_glands == 1
    assert np.asarray(Image.open(out / "turned.png")).shape == (384, 256)
    assert np.asarray(Image.open(out / "turned_overlay.png")).shape == (384, 256, 3)
    gj = json.loads((out / "turned.geojson").read_text())
    ring = np.array(gj["features"][0]["geometry"]["coordinates"][0])
    # the square is at the displayed top-right: x 216..256, y 0..40
    assert ring[:, 0].min() >= 210 and ring[:, 0].max() <= 256 and ring[:, 1].max() <= 41
    row = _csv(out / "glands.csv")[0]
    assert float(row["centroid_x"]) > 200 and float(row["centroid_y"]) < 40


# ---------------------------------------------------------------- upscaling and counts


def test_upscaling_is_capped(tmp_path: Path) -> None:
    pred = ScaledPredictor()
    with pytest.raises(GlandsegError, match=r"tiny\.png: at 100 µm/px .*enlarged 161x"):
        engine.check_scale(pred, Path("tiny.png"), (32, 32), 100.0)
    with pytest.raises(GlandsegError, match=r"big\.png: at 2 µm/px .*MP.*slide path"):
        engine.check_scale(pred, Path("big.png"), (3000, 3000), 2.0)  # 9677² px at 0.62
    engine.check_scale(pred, Path("ok.png"), (522, 775), 0.62005)  # GlaS: passes
    engine.check_scale(pred, Path("ok.png"), (1000, 1000), 0.62005 * 7.9)  # 7.9x, 62 MP
    engine.check_scale(FakePredictor(), Path("x.png"), (32, 32), 100.0)  # no resolution

    imgs = _images(tmp_path / "in", ["tiny", "fine"], size=(32, 32))
    pred.calls = 0
    rep = engine.predict_files(imgs, tmp_path / "out", pred, mpp=100.0, progress=False)
    assert rep.n_ok == 0 and [Path(p).name for p, _ in rep.failed] == ["tiny.png", "fine.png"]
    assert pred.calls == 0 and "100 µm/px" in rep.failed[0][1]


def test_summary_counts_the_glands_in_the_outputs(tmp_path: Path) -> None:
    img = np.full((40, 48, 3), 230, np.uint8)
    img[5:20, 5:20] = 40  # one dark gland: id 1 + shift 4 = 5 (ids 1-4 absent)
    Image.fromarray(img).save(tmp_path / "one.png")
    rep = engine.predict_files([tmp_path / "one.png"], tmp_path / "out", FakePredictor(shift=4),
                              progress=False)
    assert rep.n_glands == 1 == len(_csv(tmp_path / "out" / "glands.csv")) == rep.n_rows
    assert batch.count_glands(np.array([[0, 5], [5, 9]])) == 2
    assert batch.count_glands(np.zeros((0, 0), np.int32)) == 0


# ------------------------------------------------------------ full disk, read-only out


def _enospc_on(monkeypatch, module, name: str, call: int) -> None:
    real = getattr(module, name)
    count = {"n": 0}

    def failing(*a, **k):
        count["n"] += 1
        if count["n"] == call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(module, name, failing)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file() and temp_target(p.name)]


def test_full_disk_keeps_finished_images_and_stops(tmp_path: Path, monkeypatch) -> None:
    imgs = _images(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"
    _enospc_on(monkeypatch, o, "write_overlay", 2)  # b's overlay
    with pytest.raises(GlandsegError) as ei:
        engine.predict_files(imgs, out, FakePredictor(), progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{out}: cannot write")
    assert "No space left on device" in msg and "at b.png" in msg
    assert "1 image(s) of this run finished and are in glands.csv, 2 not done" in msg
    assert "--skip-existing" in msg
    # a is committed; b is absent (nothing half-written), c never started
    assert {r["image"] for r in _csv(out / "glands.csv")} == {"a"}
    assert [r["image"] for r in _csv(out / "images.csv")] == ["a"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "a.geojson", "a.png", "a_overlay.png", "glands.csv", "images.csv", "index.html"]
    assert batch.read_record(out, "b") is None and not _temps(out)
    monkeypatch.undo()
    rep = engine.predict_files(imgs, out, FakePredictor(), mode="skip", progress=False)
    assert (rep.n_ok, rep.n_skipped) == (2, 1)
    assert [r["image"] for r in _csv(out / "images.csv")] == ["a", "b", "c"]


def test_full_disk_while_joining_glands_csv(tmp_path: Path, monkeypatch) -> None:
    imgs = _images(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    real = batch.write_joined

    def failing(out_, name, text):
        if name == batch.CSV_NAME:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(out_, name, text)

    monkeypatch.setattr(batch, "write_joined", failing)
    with pytest.raises(GlandsegError, match=r"writing glands\.csv.*glands\.csv not rebuilt"):
        engine.predict_files(imgs, out, FakePredictor(), progress=False)
    monkeypatch.undo()
    assert batch.read_record(out, "a")["state"] == "done"
    rep = engine.predict_files(imgs, out, FakePredictor(), mode="skip", progress=False)
    assert rep.n_skipped == 1 and [r["image"] for r in _csv(out / "glands.csv")] == ["a", "a"]


def test_read_only_out_refused_before_the_model(tmp_path: Path, monkeypatch, capsys) -> None:
    import glandseg.cli.predict_cmd as pc

    img = _images(tmp_path / "in", ["a"])[0]
    out = tmp_path / "out"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(batch.os, "access",
                        lambda p, mode, **k: False if Path(p) == out else real(p, mode, **k))
    with pytest.raises(GlandsegError, match=r"out \(--out\) is not writable"):
        batch.check_writable(out)
    with pytest.raises(GlandsegError, match="not writable"):
        batch.plan_outputs([img], out)
    # a new --out below it: its nearest existing parent is named
    with pytest.raises(GlandsegError, match=r"out \(the nearest existing parent of --out"):
        batch.check_writable(out / "new" / "deeper")

    def no_model(args):
        raise AssertionError("the model was loaded before the writability check")

    monkeypatch.setattr(pc, "make_predictor", no_model)
    assert main(["-q", "predict", str(img), "--out", str(out)]) == 1
    assert "not writable" in _one_line(capsys.readouterr().err)
    batch.check_writable(tmp_path / "elsewhere")  # writable: passes


def test_read_only_out_for_real(tmp_path: Path) -> None:
    img = _images(tmp_path / "in", ["a"])[0]
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: permissions do not stop writing (the check is "
                        "tested with os.access monkeypatched)")
        with pytest.raises(GlandsegError, match="not writable"):
            batch.plan_outputs([img], out)
    finally:
        out.chmod(0o755)


# ------------------------------------------------------ temporary files of a killed run


def test_stale_temp_files_are_cleaned_only_when_ours(tmp_path: Path) -> None:
    imgs = _images(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    engine.predict_files(imgs[:1], out, FakePredictor(), progress=False)
    old = time.time() - 3600
    stale = [out / ".a.k3j_x9q2.png", out / ".a_overlay.abcdefgh.png",
             out / ".glands.zz9_ab12.csv", out / ".glandseg" / "images" / ".a.abcdefgh.json",
             out / ".glandseg" / ".glands.abcdefgh.json"]
    kept = [out / ".holiday.abcdefgh.png",  # not a file glandseg claims
            out / ".a.short.png",  # not the temp-file pattern
            out / "a.abcdefgh.png"]  # not hidden
    for p in stale + kept:
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    fresh = out / ".a.freshxyz.png"  # written after this run started: left alone
    fresh.write_bytes(b"x")
    os.utime(fresh, (time.time() + 3600,) * 2)
    rep = engine.predict_files(imgs, out, FakePredictor(), mode="skip", progress=False)
    assert rep.n_ok == 1 and rep.n_skipped == 1
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in [*kept, fresh])


def test_temp_target_matches_atomic_path_names(tmp_path: Path) -> None:
    seen = []
    with gio.atomic_path(tmp_path / "testA_1_overlay.png") as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"x")
    assert temp_target(seen[0]) == "testA_1_overlay.png"
    assert temp_target(".a.b.abcdefgh.geojson") == "a.b.geojson"
    assert temp_target("testA_1.png") is None and temp_target(".a.abc.png") is None


# ------------------------------------------------------------------ CSV formula injection

HOSTILE = ["=HYPERLINK(\"http---x\";\"y\")", "+1+2", "-3", "@SUM(A1)", "\tcmd", "\rcmd"]


def test_csv_safe() -> None:
    for s in HOSTILE:
        assert csv_safe(s) == "'" + s
    assert csv_safe("testA_1") == "testA_1" and csv_safe("") == ""
    assert csv_safe("a=b") == "a=b"


def test_formula_names_are_neutralised_and_still_merge(tmp_path: Path) -> None:
    stems = ["plain", *HOSTILE[:3]]
    imgs = _images(tmp_path / "in", stems + HOSTILE[3:] + ["=second"])
    out = tmp_path / "out"
    first = engine.predict_files(imgs[:4], out, FakePredictor(), progress=False)
    second = engine.predict_files(imgs[4:], out, FakePredictor(), progress=False)
    assert first.n_ok == 4 and second.n_ok == 4
    want = {s: ("'" + s if s != "plain" else s) for s in [*stems, *HOSTILE[3:], "=second"]}
    rows = _csv(out / "glands.csv")
    images = _csv(out / "images.csv")
    assert {r["image"] for r in rows} == set(want.values())
    assert sorted(r["image"] for r in images) == sorted(want.values())
    n_glands = {r["image"]: int(r["n_glands"]) for r in images}
    for r in images:
        assert sum(g["image"] == r["image"] for g in rows) == n_glands[r["image"]] > 0
    # a re-run that skips them all rebuilds the same files (merge by image holds)
    before = (out / "glands.csv").read_bytes()
    rep = engine.predict_files(imgs, out, FakePredictor(), mode="skip", progress=False)
    assert rep.n_skipped == 8 and (out / "glands.csv").read_bytes() == before
    # overwriting one hostile image replaces its rows, not adds to them
    engine.predict_files(imgs[1:2], out, FakePredictor(), mode="overwrite", progress=False)
    assert (out / "glands.csv").read_bytes() == before


def test_grades_csv_uses_grade_probability_and_safe_names() -> None:
    from glandseg.report.grading import grades_csv

    rows = list(csv.DictReader(grades_csv([("=bad", "benign", 0.25),
                                           ("ok", "malignant", 0.9)]).splitlines()))
    assert list(rows[0]) == ["image", "grade", "grade_probability"]
    assert [r["image"] for r in rows] == ["'=bad", "ok"]
    assert float(rows[0]["grade_probability"]) == 0.25


class _Grade:
    def __init__(self, p: float) -> None:
        self.probability, self.grade = p, "malignant" if p >= 0.5 else "benign"


class _FakeGrader:
    """What :class:`GradeLog` uses of an ImageGrader (its ``grader``), and its grades."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        seg = SimpleNamespace(model="glas-unet", fingerprint="0" * 64)
        self.grader = SimpleNamespace(fit={"train_majority": "malignant", "n_images": 85},
                                      threshold=0.5, feature_set="encoder", features=[1, 2],
                                      segmentation=seg, source="bundled")
        self.p = iter([0.2, 0.8, 0.4, 0.1, 0.3])

    def grade(self, image, labels=None) -> _Grade:
        return _Grade(next(self.p))


def test_grading_with_one_class_says_na_and_writes_null(tmp_path: Path) -> None:
    from glandseg.engine.grade import GradeLog
    from glandseg.report.grading import format_grading

    log = GradeLog(_FakeGrader())
    for stem, part, truth in [("testA_1", "testA", "benign"), ("testA_2", "testA", "malignant"),
                              ("=testB_1", "testB", "benign"), ("testB_2", "testB", "benign"),
                              ("testB_3", "testB", "benign")]:
        log.record(stem, part, truth, log.grader.grade(None))
    summary = log.write(tmp_path)
    text = (tmp_path / "grading.json").read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["parts"]["testB"]["roc_auc"] is None
    assert data["parts"]["testA"]["roc_auc"] == pytest.approx(1.0)
    table = format_grading(summary)
    assert not re.search(r"\bnan\b", table, re.IGNORECASE), table
    row_b = next(ln for ln in table.splitlines() if ln.startswith("testB"))
    assert "n/a (one class)" in row_b
    rows = _csv(tmp_path / "grades.csv")
    assert list(rows[0]) == ["image", "part", "truth", "grade", "grade_probability", "correct"]
    assert rows[2]["image"] == "'=testB_1"


# --------------------------------------------------------------- links in index.html

SCRIPT_NAME = "javascript:document.body.setAttribute('x','y');x"


def _links_are_inert(page_text: str, names: set[str]) -> None:
    from tests.unit.test_html_report import parse_html

    page = parse_html(page_text)
    assert not page.errors
    refs = page.hrefs + page.srcs
    assert refs
    for ref in refs:
        assert ref.startswith("./"), ref
        parts = urllib.parse.urlsplit(ref)
        assert parts.scheme == "" and parts.netloc == "" and not parts.query, ref
        assert not parts.fragment, ref
    assert names <= {urllib.parse.unquote(r[2:]) for r in refs}


def test_index_links_are_relative_and_inert() -> None:
    from glandseg.report.html import index_html

    stems = [SCRIPT_NAME, "a#b?c=d", "\"><script>alert(1)</script>", "//evil.example/x",
             "data:text/html,hi", "100% sure"]
    names = set()
    images = []
    for s in stems:
        files = [f"{s}.png", f"{s}_overlay.png", f"{s}.geojson"]
        names.update(files)
        images.append({"image": s, "n_glands": 1, "grade": "benign",
                       "grade_probability": 0.07, "files": files})
    text = index_html(images)
    _links_are_inert(text, names)
    assert "<script>alert" not in text
    assert "P(malignant) 0.07" in text and "p=" not in text


def test_predict_index_with_a_script_file_name(tmp_path: Path) -> None:
    imgs = _images(tmp_path / "in", [SCRIPT_NAME, "plain"])
    out = tmp_path / "out"
    assert engine.predict_files(imgs, out, FakePredictor(), progress=False).n_ok == 2
    text = (out / "index.html").read_text()
    _links_are_inert(text, {f"{SCRIPT_NAME}_overlay.png", "plain.geojson"})
    for ref in re.findall(r'(?:href|src)="([^"]+)"', text):
        target = out / urllib.parse.unquote(ref.replace("&#x27;", "'"))
        assert target.is_file(), ref  # each link opens the file it names


def test_clicking_a_script_named_link_runs_nothing_in_chromium(tmp_path: Path) -> None:
    from tests.unit.test_html_report import _chromium, _render, parse_html

    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not found (apt-get install chromium): the click test of "
                    "index.html is skipped; the structural check of its links still runs")
    imgs = _images(tmp_path / "in", [SCRIPT_NAME])
    out = tmp_path / "out"
    engine.predict_files(imgs, out, FakePredictor(), progress=False)
    text = (out / "index.html").read_text()
    click = ("<script>var l=[].find.call(document.querySelectorAll('a'),function(a){"
             "return a.textContent.indexOf('.geojson')>=0;});"
             "if(l){l.click();}</script></body>")

    def clicked(page_text: str, name: str) -> tuple[str, dict]:
        page = tmp_path / out.name / name
        page.write_text(page_text.replace("</body>", click))
        dom = _render(browser, page.as_uri(), ["--dump-dom"]).stdout
        body = next((a for t, a in parse_html(dom).tags if t == "body"), {})
        return dom, body

    # control: the same page with the link as it was before (raw name): the click runs it
    raw = text.replace(f'href="./{urllib.parse.quote(SCRIPT_NAME + ".geojson", safe="/")}"',
                       'href="' + SCRIPT_NAME.replace("'", "&#x27;") + '.geojson"')
    assert raw != text
    _, body = clicked(raw, "control.html")
    assert body.get("x") == "y", "the control did not run the script: the test cannot tell"
    dom, body = clicked(text, "clicked.html")
    assert body.get("x") != "y" and 'x="y"' not in dom
    assert "FeatureCollection" in dom, "the click did not open the GeoJSON file it names"


# --------------------------------------------------------------------- untrained models


@pytest.mark.parametrize(("spec", "near"), [("unet-lite0", "glas-unet"), ("unet", "glas-unet"),
                                            ("maskrcnn-lite0", "glas-maskrcnn")])
def test_predict_refuses_an_untrained_architecture(tmp_path: Path, spec: str, near: str,
                                                   capsys, monkeypatch) -> None:
    import glandseg.cli.predict_cmd as pc

    img = _images(tmp_path / "in", ["a"])[0]
    out = tmp_path / "out"
    monkeypatch.setattr(pc, "make_predictor", lambda args: FakePredictor())
    assert main(["-q", "predict", str(img), "--out", str(out), "--model", spec]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"did you mean {near}?" in line and "--allow-untrained" in line
    assert not out.exists()
    # asked for: it runs (here with the fake predictor standing in for the network)
    assert main(["-q", "predict", str(img), "--out", str(out), "--model", spec,
                 "--allow-untrained", "--no-grade"]) == 0
    assert (out / "a.png").is_file()


def test_trained_models_pass_the_untrained_check(tmp_path: Path) -> None:
    from glandseg.cli.predict_cmd import refuse_untrained

    refuse_untrained("glas-unet")
    refuse_untrained("glas-maskrcnn")
    run = tmp_path / "unet"  # a run folder that happens to share an architecture's name
    run.mkdir()
    refuse_untrained(str(run))
    refuse_untrained("no-such-model")  # the loader names unknown models
    with pytest.raises(GlandsegError, match="did you mean glas-unet"):
        refuse_untrained("unet-lite0")
    refuse_untrained("unet-lite0", allow=True)


# ----------------------------------------------------------- score a whole GlaS folder


def _glas_like(tmp_path: Path, gt_stems: list[str], pred_stems: list[str]) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "glas"
    pred.mkdir()
    gt.mkdir()
    for i, stem in enumerate(gt_stems):
        img, lab = synth_pair(40, 48, n_glands=2, seed=i)
        Image.fromarray(img).save(gt / f"{stem}.bmp")
        Image.fromarray(lab).save(gt / f"{stem}_anno.bmp")
        if stem in pred_stems:
            Image.fromarray(lab.astype(np.uint16)).save(pred / f"{stem}.png")
    return pred, gt


GLAS_STEMS = ["train_1", "train_2", "testA_1", "testA_2", "testB_1", "testB_2"]


def test_score_a_glas_folder_scores_the_predicted_parts(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    pred, gt = _glas_like(tmp_path, GLAS_STEMS, ["testA_1", "testA_2", "testB_1", "testB_2"])
    assert main(["score", str(pred), str(gt), "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m) == {"testA", "testB"} and m["testA"]["n_images"] == 2
    assert m["testA"]["pooled"]["f1"] == 1.0
    note = " ".join(r.getMessage() for r in caplog.records)
    assert "not scored" in note and "train (2 annotations)" in note
    assert "testA (2 images)" in note


def test_score_only_test_a_predicted(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    pred, gt = _glas_like(tmp_path, GLAS_STEMS, ["testA_1", "testA_2"])
    assert main(["score", str(pred), str(gt), "--json", str(tmp_path / "m.json")]) == 0
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"testA"}
    note = " ".join(r.getMessage() for r in caplog.records)
    assert "testB (2 annotations)" in note and "train (2 annotations)" in note


def test_score_a_part_with_a_missing_prediction_is_an_error(tmp_path: Path, capsys) -> None:
    pred, gt = _glas_like(tmp_path, GLAS_STEMS, ["testA_1", "testB_1", "testB_2"])
    assert main(["-q", "score", str(pred), str(gt)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "testA_2" in line and "testA_1" not in line and "train_1" not in line


def test_score_parts_option(tmp_path: Path, capsys) -> None:
    pred, gt = _glas_like(tmp_path, GLAS_STEMS, ["testA_1", "testA_2"])
    out = tmp_path / "m.json"
    assert main(["-q", "score", str(pred), str(gt), "--parts", "testA", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"testA"}
    # a chosen part must be complete: testB has no predictions at all
    assert main(["-q", "score", str(pred), str(gt), "--parts", "testA,testB"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "testB_1.png" in line and "testB_2.png" in line
    with pytest.raises(SystemExit) as ei:
        main(["-q", "score", str(pred), str(gt), "--parts", "testC"])
    assert ei.value.code == 2 and "testC" in capsys.readouterr().err
    only_a = tmp_path / "only_a"
    only_a.mkdir()
    (gt / "testA_1_anno.bmp").rename(only_a / "testA_1_anno.bmp")
    assert main(["-q", "score", str(pred), str(only_a), "--parts", "testB"]) == 1
    assert "no annotations of testB" in capsys.readouterr().err


def test_score_nothing_predicted_names_every_missing_image(tmp_path: Path, capsys) -> None:
    pred, gt = _glas_like(tmp_path, ["testA_1", "testA_2"], [])
    assert main(["-q", "score", str(pred), str(gt)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "testA_1.png" in line and "testA_2.png" in line


def test_score_parts_match_the_metrics_module() -> None:
    from glandseg.cli.score_cmd import GT_PARTS
    from glandseg.metrics.score import GT_PARTS as METRICS_PARTS

    assert GT_PARTS == METRICS_PARTS
