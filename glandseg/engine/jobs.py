"""Worker processes of a CPU run: several images (or slide windows) segmented at once.

On the CPU, ``predict`` splits its threads (``--threads``, default: every core this process
may use) over ``jobs`` worker processes, each running ONNX Runtime with ``threads // jobs``
threads on whole images. Everything around the network (resampling, post-processing,
outlines, PNG and GeoJSON writing) is single-threaded NumPy/SciPy, so one process per core
keeps every core busy where one process with N network threads leaves N - 1 idle between
networks: on a 2-core Xeon, ``glandseg predict`` of 20 GlaS images took 5.0 s in 2 processes
x 1 thread against 6.3 s in 1 x 2, and of 80 images 16.8 against 23.5 s
(benchmarks/results/predict.md).

- :func:`plan_jobs`: how many processes and threads for a run (``auto``: one per thread,
  at most one per image, fewer where memory is short).
- :func:`worker_pool`: a ``concurrent.futures`` pool of forked workers that inherit the
  caller's predictor and grader (their ONNX sessions are closed first and reopened in each
  worker with its share of threads). Automatic on Linux; on macOS on request (``--jobs``:
  forking a process that loaded Apple's frameworks can crash it); on Windows (no fork) and
  for the torch backend (torch's thread pools do not survive a fork) runs stay in one
  process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from glandseg import GlandsegError

log = logging.getLogger(__name__)

__all__ = ["MEMORY_PER_JOB", "available_cores", "plan_jobs", "worker_pool"]

#: Memory one worker may need for a GlaS-sized image or a slide window (bytes): ``auto``
#: starts no more workers than the available memory holds.
MEMORY_PER_JOB = 2 * 1024**3


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


#: A container's memory limit and use (cgroup v2, then v1): ``(limit file, usage file)``.
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                 "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):  # absent, or "max" (no limit)
        return None


def _cgroup_room() -> int | None:
    """Bytes left under this container's memory limit (``None``: no limit found)."""
    for limit_file, usage_file in CGROUP_FILES:
        limit, used = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and limit < 1 << 60 and used is not None:
            return max(0, limit - used)
    return None


def _available_memory() -> int | None:
    """Bytes of memory available to new processes: Linux's ``MemAvailable`` (free memory
    plus reclaimable cache), else the free pages, and at most what is left under a
    container's memory limit (cgroup); ``None`` where nothing is known."""
    found = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = None
    room = _cgroup_room()
    if room is not None:
        found = room if found is None else min(found, room)
    return found


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _backends(predictor, grader) -> list:
    found = []
    for p in (predictor, getattr(grader, "predictor", None)):
        be = getattr(p, "backend", None)
        if be is not None and all(be is not f for f in found):
            found.append(be)
    return found


def plan_jobs(predictor, n_items: int, jobs: int | None = None, threads: int | None = None,
              grader=None) -> tuple[int, int | None]:
    """``(processes, network threads per process)`` for ``n_items`` images or windows.

    ``jobs``: processes asked for (``None``: auto); ``threads``: all threads of the run
    (``None``: :func:`available_cores`). Auto: one process per thread, at most ``n_items``,
    at most what the available memory holds (:data:`MEMORY_PER_JOB` each); 1 (this process)
    for a torch network or where processes cannot be forked. An explicit ``jobs > 1`` that
    cannot run is a one-line :class:`GlandsegError`. Auto is 1 outside Linux. With one
    process, ``threads`` is returned unchanged (``None``: the backend's default).
    """
    total = int(threads) if threads else available_cores()
    found = _backends(predictor, grader)
    onnx = bool(found) and all(getattr(be, "name", "") == "onnx" for be in found)
    if jobs is not None and jobs > 1:
        if not onnx:
            raise GlandsegError(f"--jobs {jobs} runs ONNX Runtime in worker processes; the "
                                "torch backend (a GPU, Mask R-CNN, --backend torch) runs in "
                                "one: drop --jobs or use --backend onnx")
        if not _can_fork():
            raise GlandsegError(f"--jobs {jobs} needs worker processes forked from this one, "
                                "which this OS does not offer: drop --jobs")
    if jobs is None:  # macOS: forking after system frameworks load can crash; ask for it
        jobs = total if (onnx and _can_fork() and sys.platform.startswith("linux")) else 1
        mem = _available_memory()
        if mem is not None:
            jobs = min(jobs, max(1, mem // MEMORY_PER_JOB))
    jobs = max(1, min(int(jobs), max(1, n_items)))
    if jobs == 1:
        return 1, threads
    return jobs, max(1, total // jobs)


_WORKER: dict = {}


def _start_worker(predictor, grader, threads: int) -> None:
    """In a new worker: its share of threads; sessions open on first use (forked
    processes inherit the caller's objects, without the threads of its sessions)."""
    for be in _backends(predictor, grader):
        be.set_threads(threads)
    _WORKER.update(predictor=predictor, grader=grader)


def worker_state() -> tuple:
    """``(predictor, grader)`` inherited by this worker process."""
    return _WORKER["predictor"], _WORKER["grader"]


@contextlib.contextmanager
def worker_pool(predictor, grader, jobs: int, threads: int | None
                ) -> Iterator[Executor | None]:
    """A pool of ``jobs`` forked worker processes, each with ``threads`` network threads and
    the caller's ``predictor`` and ``grader`` (:func:`worker_state`); ``None`` for ``jobs``
    1. The caller's ONNX sessions are closed first (reopened on its next use)."""
    if jobs <= 1:
        yield None
        return
    for be in _backends(predictor, grader):
        close = getattr(be, "close", None)
        if close is not None:
            close()
    ctx = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_start_worker,
                               initargs=(predictor, grader, threads or 1))
    log.debug("%d worker processes, %s network thread(s) each", jobs, threads)
    try:
        # fork every worker now, while this process runs no other thread (no ONNX Runtime
        # pool, no progress-bar monitor): a fork beside live threads may deadlock the child
        pool.submit(int).result()
        yield pool
    except BrokenProcessPool as exc:
        raise GlandsegError(f"a worker process died ({exc}; killed for lack of memory?); "
                            f"run again with fewer --jobs than {jobs} (--skip-existing keeps "
                            "the images already done)") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
