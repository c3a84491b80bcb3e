"""Running the windows of a slide: here, or as tasks on a Dask ``distributed.Client``
(:func:`dask_client`) or a ``concurrent.futures`` executor (:func:`predict_windows`), each
task a batch of windows written into the cache (:func:`predict_window_batch`); the heap
given back to the OS after each window (:func:`trim_heap`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from glandseg import GlandsegError
from glandseg.data.slide import Slide, open_slide
from glandseg.infer.windows import Window, WindowStore, model_mpp, save_labels

_LIBC: object = None


def trim_heap() -> None:
    """Give the heap memory freed by a window back to the OS (glibc ``malloc_trim``; a
    no-op elsewhere): without it fragmentation lets the RSS between windows creep up."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def predict_window(predictor, slide: Slide, zoom: float, w: Window, path: Path) -> None:
    """Read one window at the model's resolution, segment it, save its labels to ``path``."""
    y0, x0, y1, x1 = w.ext
    image = slide.read_at(zoom, y0, x0, y1 - y0, x1 - x0)
    labels = predictor.predict(image, mpp=model_mpp(predictor))
    save_labels(path, np.asarray(labels))
    del image, labels
    trim_heap()


def predict_window_batch(predictor, slide_path: str, zoom: float, windows: list[Window],
                         cache: str, threads: int | None = None) -> int:
    """One task of a distributed run (a Dask worker or a process pool): segment
    ``windows`` of the slide at ``slide_path`` into the cache folder ``cache`` (windows
    already there are skipped, so a task may safely run twice). ``threads``: network threads
    in this worker. Returns the number of windows predicted."""
    if threads:
        predictor.backend.set_threads(threads)
    n = 0
    with open_slide(slide_path) as slide:
        for w in windows:
            path = Path(cache) / f"{w.name}.npz"
            if not path.is_file():
                predict_window(predictor, slide, zoom, w, path)
                n += 1
    return n


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None
                ) -> Iterator[object | None]:
    """A Dask ``distributed.Client`` for :func:`predict_slide`: connected to the scheduler
    at ``scheduler`` (e.g. ``tcp://host:8786``), else on a ``LocalCluster`` of ``workers``
    processes (one torch thread each when they share this machine's cores); ``None`` (run
    here) when neither is given. Raises :class:`GlandsegError` when Dask is missing or
    the scheduler cannot be reached."""
    if scheduler is None and not workers:
        yield None
        return
    try:
        import distributed
    except ImportError as exc:
        raise GlandsegError("--dask-scheduler/--workers need Dask: pip install "
                            "'glandseg[dask]' (dask, distributed)") from exc
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise GlandsegError(f"--dask-scheduler {scheduler}: cannot connect ({exc}); "
                                "start `dask scheduler` there or check the address") from exc
        with client:
            yield client
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, env=env) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def is_dask(client) -> bool:
    return type(client).__module__.split(".")[0] == "distributed"


def predict_windows(predictor, slide: Slide, zoom: float, todo: list[Window], store:
                     WindowStore, bar, client=None, batch: int = 4,
                     threads: int | None = None) -> None:
    """Segment ``todo`` into the cache: here, or as tasks of ``client`` (a Dask
    ``distributed.Client`` or a ``concurrent.futures`` executor) of ``batch`` windows each."""
    if client is None:
        for w in todo:
            predict_window(predictor, slide, zoom, w, store.path(w.index))
            bar.update(1)
        return
    if is_dask(client):
        from distributed import as_completed

        shared = client.scatter(predictor, broadcast=True)
        submit = lambda *a: client.submit(predict_window_batch, *a, pure=False)  # noqa: E731
    else:
        from concurrent.futures import as_completed

        shared = predictor
        submit = lambda *a: client.submit(predict_window_batch, *a)  # noqa: E731
    futures = {}
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        f = submit(shared, str(slide.path), zoom, chunk, str(store.folder), threads)
        futures[f] = len(chunk)
    for f in as_completed(list(futures)):
        f.result()  # re-raises a worker's error here
        bar.update(futures[f])
