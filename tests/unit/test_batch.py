"""A batch's output folder never loses data: no input or foreign file is overwritten,
``glands.csv`` keeps the rows of every image in the folder (re-runs and concurrent runs
merge), an interrupted write is recoverable. A fake predictor keeps these fast."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glandseg import GlandsegError
from glandseg.data.io import read_label
from glandseg.engine import predict as engine
from glandseg.report import batch
from glandseg.report import outputs as o
from tests.conftest import synth_pair


class FakePredictor:
    """Labels = connected dark rectangles of :func:`synth_pair` (ids 1..n), plus ``shift``
    so two predictors give distinguishable outputs; ``delay`` s per image."""

    def __init__(self, shift: int = 0, delay: float = 0.0) -> None:
        self.shift, self.delay, self.calls = shift, delay, 0

    def predict(self, image: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi

        self.calls += 1
        time.sleep(self.delay)
        lab, _ = ndi.label(image.mean(axis=2) < 150)
        return np.where(lab > 0, lab + self.shift, 0).astype(np.int32)


def _images(folder: Path, stems: list[str], ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, stem in enumerate(stems):
        img, _ = synth_pair(40, 48, n_glands=2 + i % 2, seed=i)
        Image.fromarray(img).save(folder / f"{stem}{ext}")
        paths.append(folder / f"{stem}{ext}")
    return paths


def _rows(out: Path) -> list[dict]:
    with open(out / "glands.csv", newline="") as f:
        return list(csv.DictReader(f))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_output_over_input_refused_nothing_written(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    paths = _images(d, ["a", "b"])
    before = _snapshot(d)
    with pytest.raises(GlandsegError, match=r"overwrite an input.*a\.png"):
        engine.predict_files(batch.collect_inputs([str(d)]), d, FakePredictor())
    assert _snapshot(d) == before and not (d / ".glandseg").exists()
    # the same through a symlink in --out pointing at the input
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(paths[0])
    with pytest.raises(GlandsegError, match="overwrite an input"):
        engine.predict_files(paths, out, FakePredictor())
    assert (out / "a.png").is_symlink() and _snapshot(d) == before
    # ... and through a hard link
    (out / "a.png").unlink()
    os.link(paths[0], out / "a.png")
    with pytest.raises(GlandsegError, match="overwrite an input"):
        engine.predict_files(paths, out, FakePredictor())
    assert _snapshot(d) == before


def test_jpg_inputs_into_their_own_folder_and_rerun(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    _images(d, ["a", "b"], ext=".jpg")
    rep = engine.predict_files(batch.collect_inputs([str(d)]), d, FakePredictor())
    assert rep.n_ok == 2 and (d / "a.png").is_file()
    # the label images glandseg wrote are not taken for inputs on the next run
    assert [p.name for p in batch.collect_inputs([str(d)])] == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize("case", ["out_is_file", "output_is_folder", "csv_is_folder"])
def test_out_file_or_output_folder_refused(tmp_path: Path, case: str) -> None:
    paths = _images(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    if case == "out_is_file":
        out.write_text("x")
        match = "existing file, not a folder"
    else:
        (out / ("a_overlay.png" if case == "output_is_folder" else "glands.csv")).mkdir(
            parents=True)
        match = "is a folder"
    with pytest.raises(GlandsegError, match=match):
        engine.predict_files(paths, out, FakePredictor())
    assert not (tmp_path / "out" / ".glandseg").exists()


def test_rerun_refused_then_overwrite_or_skip(tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    engine.predict_files(paths, out, FakePredictor())
    first = read_label(out / "a.png")
    before = _snapshot(out)
    with pytest.raises(GlandsegError, match="--overwrite.*--skip-existing"):
        engine.predict_files(paths, out, FakePredictor(shift=10))
    assert _snapshot(out) == before
    fake = FakePredictor(shift=10)
    rep = engine.predict_files(paths, out, fake, mode="skip")
    assert rep.n_skipped == 2 and rep.n_ok == 0 and fake.calls == 0
    assert _snapshot(out) == before
    rep = engine.predict_files(paths, out, FakePredictor(shift=10), mode="overwrite")
    assert rep.n_ok == 2
    np.testing.assert_array_equal(read_label(out / "a.png"), np.where(first > 0, first + 10, 0))
    ids = sorted(int(r["gland_id"]) for r in _rows(out) if r["image"] == "a")
    assert ids == sorted(np.unique(first[first > 0]) + 10)  # rows replaced, not duplicated


@pytest.mark.parametrize("mode", batch.MODES)
def test_foreign_or_edited_files_never_overwritten(tmp_path: Path, mode: str) -> None:
    paths = _images(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.geojson").write_text("my own notes")
    with pytest.raises(GlandsegError, match="a.geojson exists and was not written by glandseg"):
        engine.predict_files(paths, out, FakePredictor(), mode=mode)
    assert (out / "a.geojson").read_text() == "my own notes" and not (out / "b.png").exists()
    (out / "a.geojson").unlink()
    engine.predict_files(paths, out, FakePredictor())
    (out / "b_overlay.png").write_bytes(b"edited by hand")
    with pytest.raises(GlandsegError, match="b_overlay.png was changed after glandseg"):
        engine.predict_files(paths, out, FakePredictor(), mode=mode)
    assert (out / "b_overlay.png").read_bytes() == b"edited by hand"
    (out / "b_overlay.png").unlink()
    text = (out / "a.geojson").read_text()
    edited = text.replace("Gland 1", "Gland 7")  # same size, other content
    assert len(edited) == len(text) and edited != text
    (out / "a.geojson").write_text(edited)
    with pytest.raises(GlandsegError, match="a.geojson was changed after glandseg"):
        engine.predict_files(paths, out, FakePredictor(), mode=mode)
    assert (out / "a.geojson").read_text() == edited


def test_foreign_glands_csv_refused(tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "glands.csv").write_text("image,my column\n")
    with pytest.raises(GlandsegError, match="glands.csv exists and was not written"):
        engine.predict_files(paths, out, FakePredictor())
    assert (out / "glands.csv").read_text() == "image,my column\n"
    assert not (out / "a.png").exists()


def test_runs_into_one_folder_merge_by_image(tmp_path: Path) -> None:
    pa = _images(tmp_path / "in1", ["img_2", "img_10"])
    pb = _images(tmp_path / "in2", ["img_1"])
    out = tmp_path / "out"
    engine.predict_files(pa, out, FakePredictor())
    n_a = len(_rows(out))
    rep = engine.predict_files(pb, out, FakePredictor())
    rows = _rows(out)
    assert rep.n_rows == len(rows) > n_a
    images = [r["image"] for r in rows]
    assert set(images) == {"img_1", "img_2", "img_10"}
    assert images == sorted(images, key=lambda s: int(s.split("_")[1]))  # natural order
    # a run whose inputs all fail keeps every earlier row
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rep = engine.predict_files([bad], out, FakePredictor())
    assert rep.failed and rep.n_ok == 0 and _rows(out) == rows
    # an image whose outputs the user deleted leaves glands.csv at the next join
    (out / "img_1.png").unlink()
    batch.join_glands_csv(out)
    assert {r["image"] for r in _rows(out)} == {"img_2", "img_10"}
    # the joined CSV is the exact text the per-image rows give
    lab = read_label(out / "img_2.png")
    want = o.glands_csv(o.format_rows(o.measure(lab, engine.GLAS_MPP, image="img_2")))
    assert want.splitlines()[1:] == [ln for ln in (out / "glands.csv").read_text().splitlines()
                                     if ln.startswith("img_2,")]


def test_interrupted_image_write_is_recoverable(tmp_path: Path, monkeypatch) -> None:
    paths = _images(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"

    def killed(*a, **k):
        raise RuntimeError("killed while writing the overlay")

    with monkeypatch.context() as m:
        m.setattr(o, "write_overlay", killed)
        with pytest.raises(RuntimeError):
            engine.predict_files(paths, out, FakePredictor())
    assert (out / "a.png").is_file() and not (out / "a_overlay.png").exists()
    # the half-written label is ours (pending record): refused by default, redone on resume
    with pytest.raises(GlandsegError, match="--skip-existing"):
        engine.predict_files(paths, out, FakePredictor())
    rep = engine.predict_files(paths, out, FakePredictor(), mode="skip")
    assert rep.n_ok == 2 and rep.n_skipped == 0
    assert {r["image"] for r in _rows(out)} == {"a", "b"}
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".glandseg"]


def test_glands_csv_recognised_after_a_kill_at_any_write(tmp_path: Path, monkeypatch) -> None:
    """A kill before, between or after recording the new checksum and replacing glands.csv
    must leave a glands.csv that the next run still accepts as its own."""
    from glandseg.data.io import read_image

    paths = _images(tmp_path / "in", ["a", "b", "c", "d"])
    out = tmp_path / "out"
    engine.predict_files(paths[:1], out, FakePredictor())
    real = batch.write_text
    for kill_at, path in enumerate(paths[1:]):  # meta (both sums), glands.csv, meta (new)
        image = read_image(path)  # a new image, so the joined text changes
        batch.commit_image(out, path.stem, path, image, FakePredictor().predict(image), None)
        calls = []

        def write(target, text, calls=calls, kill_at=kill_at):
            if Path(target).name in ("glands.csv", "glands.json"):
                if len(calls) == kill_at:
                    raise KeyboardInterrupt
                calls.append(target)
            real(target, text)

        with monkeypatch.context() as m:
            m.setattr(batch, "write_text", write)
            with pytest.raises(KeyboardInterrupt):
                batch.join_glands_csv(out)
        batch.join_glands_csv(out)  # no "not written by glandseg" error
    assert {r["image"] for r in _rows(out)} == {"a", "b", "c", "d"}


def _worker(paths: list[str], out: str, start, shift: int) -> None:
    start.wait()
    rep = engine.predict_files([Path(p) for p in paths], out, FakePredictor(shift, delay=0.02),
                              progress=False)
    assert rep.n_ok == len(paths)


@pytest.mark.skipif(os.name != "posix", reason="fcntl locks are POSIX")
def test_two_concurrent_processes_both_survive(tmp_path: Path) -> None:
    pa = _images(tmp_path / "in1", [f"a{i}" for i in range(6)])
    pb = _images(tmp_path / "in2", [f"b{i}" for i in range(6)])
    out = tmp_path / "out"
    ctx = mp.get_context("fork")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=([str(p) for p in ps], str(out), start, k))
             for k, ps in ((0, pa), (100, pb))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = _rows(out)
    assert {r["image"] for r in rows} == {p.stem for p in pa + pb}
    for p in pa + pb:
        lab = read_label(out / f"{p.stem}.png")
        assert sorted(int(r["gland_id"]) for r in rows if r["image"] == p.stem) == sorted(
            np.unique(lab[lab > 0]).tolist())
