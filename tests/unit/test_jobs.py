"""Worker processes of a CPU predict (glandseg.engine.jobs): how many, the same outputs as
one process, failed inputs and write errors reported as in one process, and the image
locks that let workers write different images at once."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from glandseg import GlandsegError
from glandseg.data.io import read_image, write_image
from glandseg.engine import jobs
from glandseg.engine import predict as engine
from glandseg.report import batch

pytest.importorskip("onnxruntime")


class _Backend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.threads = None


class _Pred:
    def __init__(self, backend: str | None) -> None:
        if backend is not None:
            self.backend = _Backend(backend)


def test_plan_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "_available_memory", lambda: 64 * 1024**3)
    onnx = _Pred("onnx")
    assert jobs.plan_jobs(onnx, 10, threads=4) == (4, 1)
    assert jobs.plan_jobs(onnx, 3, threads=4) == (3, 1)  # at most one per image
    assert jobs.plan_jobs(onnx, 1, threads=4) == (1, 4)  # one image: its threads unchanged
    assert jobs.plan_jobs(onnx, 10, jobs=2, threads=5) == (2, 2)
    assert jobs.plan_jobs(onnx, 10, jobs=1, threads=None) == (1, None)
    monkeypatch.setattr(jobs, "_available_memory", lambda: 5 * 1024**3)
    assert jobs.plan_jobs(onnx, 10, threads=8) == (2, 4)  # memory for two workers only
    # no backend (a stand-in predictor) or torch: one process
    assert jobs.plan_jobs(_Pred(None), 10, threads=4) == (1, 4)
    assert jobs.plan_jobs(_Pred("torch"), 10, threads=4) == (1, 4)
    with pytest.raises(GlandsegError, match="--jobs 2 .*torch"):
        jobs.plan_jobs(_Pred("torch"), 10, jobs=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four small H&E fields: GlaS crops when the data is here, else synthetic tissue."""
    from tests.conftest import glas_path

    d = tmp_path_factory.mktemp("jobs_in")
    glas = glas_path()
    paths = []
    for i in range(4):
        src = glas / f"testA_{i + 1}.png"
        if src.is_file():
            img = read_image(src)[:224, :288]
        else:
            rng = np.random.default_rng(i)
            img = np.full((224, 288, 3), (230, 190, 220), np.uint8)
            yy, xx = np.mgrid[:224, :288]
            for _ in range(5):
                cy, cx, r = rng.integers(30, 190), rng.integers(30, 250), rng.integers(15, 30)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (120, 60, 150)
        write_image(d / f"img{i}.png", img)
        paths.append(d / f"img{i}.png")
    return paths


@pytest.fixture(scope="module")
def predictor():
    from glandseg.infer.predictor import Predictor

    return Predictor.from_name("glas-unet", backend="onnx", threads=2, deblur="auto")


def _record_pids(monkeypatch: pytest.MonkeyPatch, module, name: str, folder: Path) -> None:
    """Wrap ``module.name`` to leave a file named after the process that ran it."""
    import os

    real = getattr(module, name)
    folder.mkdir()

    def wrapped(*a, **kw):
        (folder / str(os.getpid())).touch()
        return real(*a, **kw)

    monkeypatch.setattr(module, name, wrapped)


def test_workers_write_the_same_outputs(images: list[Path], predictor, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    one = engine.predict_files(images, tmp_path / "one", predictor, progress=False, jobs=1)
    _record_pids(monkeypatch, engine, "segment_file", tmp_path / "pids")
    two = engine.predict_files(images, tmp_path / "two", predictor, progress=False, jobs=2)
    pids = {int(f.name) for f in (tmp_path / "pids").iterdir()}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes did the work
    assert one.n_ok == two.n_ok == 4 and one.n_glands == two.n_glands
    assert one.n_rows == two.n_rows
    for p in images:
        for name in (f"{p.stem}.png", f"{p.stem}.geojson", f"{p.stem}_overlay.png"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert ((tmp_path / "one" / "glands.csv").read_text()
            == (tmp_path / "two" / "glands.csv").read_text())
    # the parent's session was closed for the fork and reopens on its next use
    assert predictor.predict(read_image(images[0])).shape == (224, 288)


def test_failed_input_in_a_worker(images: list[Path], predictor, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rep = engine.predict_files([*images[:2], bad], tmp_path / "out", predictor,
                               progress=False, jobs=2)
    assert rep.n_ok == 2 and [p for p, _ in rep.failed] == [str(bad)]
    assert "broken.png" in rep.failed[0][1]


def test_write_error_in_a_worker_stops_the_batch(images: list[Path], predictor,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.commit_image

    def full_disk(out, stem, *a, **kw):  # inherited by the forked workers
        if stem == "img1":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(out, stem, *a, **kw)

    monkeypatch.setattr(engine, "commit_image", full_disk)
    out = tmp_path / "out"
    with pytest.raises(GlandsegError, match="No space left on device.* at img1.png"):
        engine.predict_files(images, out, predictor, progress=False, jobs=2)
    assert not (out / "img1.png").exists()
    # the images that did finish are joined into glands.csv
    done = [p.stem for p in images if (out / f"{p.stem}.png").exists()]
    assert (out / "glands.csv").is_file() and "img1" not in done


def test_image_locks_let_two_images_be_written_at_once(tmp_path: Path) -> None:
    got: dict[str, float] = {}

    def take(name: str, lock) -> None:
        with lock:
            got[name] = time.monotonic()

    with batch.image_lock(tmp_path, "a"):
        other = threading.Thread(target=take, args=("b", batch.image_lock(tmp_path, "b")))
        other.start()
        other.join(5)
        assert "b" in got  # another image: not blocked
        joiner = threading.Thread(target=take, args=("join", batch.folder_lock(tmp_path)))
        joiner.start()
        time.sleep(0.3)
        assert "join" not in got  # joining glands.csv waits for the image being written
        released = time.monotonic()
    joiner.join(5)
    assert got["join"] >= released


def test_slide_windows_in_the_workers(images: list[Path], predictor, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyramidal TIFF in a batch: its windows run in the workers; the labels equal one
    process's."""
    import tifffile

    from glandseg.data.slide import write_pyramid
    from glandseg.infer import slide as isl

    tiles = [read_image(p) for p in images]
    img = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    src = tmp_path / "in"
    src.mkdir()
    write_pyramid(src / "slide.tif", img.shape[:2], lambda lv, y, x, h, w: img[
        ::2 ** lv, ::2 ** lv][y:y + h, x:x + w], np.uint8, samples=3, tile=128, min_side=200)
    small = isl.SlideConfig(core=256, margin=64, thumb_side=256)
    monkeypatch.setattr(isl, "SlideConfig", lambda: small)
    paths = [src / "slide.tif", images[0]]
    import os

    from glandseg.infer import parallel

    one = engine.predict_files(paths, tmp_path / "one", predictor, progress=False, jobs=1)
    _record_pids(monkeypatch, parallel, "predict_window", tmp_path / "pids")
    two = engine.predict_files(paths, tmp_path / "two", predictor, progress=False, jobs=2)
    pids = {int(f.name) for f in (tmp_path / "pids").iterdir()}
    assert pids and os.getpid() not in pids  # the windows ran in the workers
    assert one.n_ok == two.n_ok == 2 and one.n_glands == two.n_glands > 0
    a, b = (tifffile.imread(tmp_path / d / "slide.tif") for d in ("one", "two"))
    assert a.shape == img.shape[:2] and np.array_equal(a, b)


def test_evaluate_in_workers_gives_the_same_figures(glas_dir: Path, predictor, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import glandseg.engine.evaluate as ev

    one = ev.evaluate_model(predictor, glas_dir, tmp_path / "one", limit=2, progress=False,
                            jobs=1)
    _record_pids(monkeypatch, ev, "evaluate_sample", tmp_path / "pids")
    two = ev.evaluate_model(predictor, glas_dir, tmp_path / "two", limit=2, progress=False,
                            jobs=2)
    pids = {int(f.name) for f in (tmp_path / "pids").iterdir()}
    assert pids and os.getpid() not in pids
    assert one == two and one["testA"]["n_images"] == 2
    for name in ("per_image.csv", "per_image_split_gt.csv", "grades.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()


def test_write_error_cancels_the_images_not_started(images: list[Path], predictor,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Many images, the first fails to write: the rest are cancelled, not crashed on."""
    many = []
    for i in range(12):
        many.append(tmp_path / f"m{i:02d}.png")
        many[-1].symlink_to(images[i % len(images)])

    def full_disk(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine, "commit_image", full_disk)
    with pytest.raises(GlandsegError, match=r"No space left.*stopped: 0 image\(s\).* not done"):
        engine.predict_files(many, tmp_path / "out", predictor, progress=False, jobs=2)


def test_a_killed_worker_is_a_one_line_error(images: list[Path], predictor, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    def killed(*a, **kw):  # as the OOM killer would
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(engine, "segment_file", killed)
    with pytest.raises(GlandsegError, match="a worker process died.*fewer --jobs than 2"):
        engine.predict_files(images, tmp_path / "out", predictor, progress=False, jobs=2)


def test_a_container_memory_limit_caps_the_workers(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    limit, used = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text(f"{3 * 1024**3}\n")
    used.write_text(f"{512 * 1024**2}\n")
    monkeypatch.setattr(jobs, "CGROUP_FILES", ((str(limit), str(used)),))
    assert jobs._available_memory() == 3 * 1024**3 - 512 * 1024**2
    assert jobs.plan_jobs(_Pred("onnx"), 10, threads=8) == (1, 8)  # room for one worker
    limit.write_text("max\n")  # no limit: the machine's memory counts
    assert jobs._available_memory() > 0
