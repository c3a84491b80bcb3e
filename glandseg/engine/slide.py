"""One whole slide or large image into an output folder: the slide path of ``predict``.

The windows are segmented by :func:`glandseg.infer.slide.predict_slide` (resumable window
cache in ``<out>/.glandseg/slides/<stem>/``, optionally as Dask tasks: :func:`dask_client`)
and the outputs written by :mod:`glandseg.report.slide` through
:func:`glandseg.report.batch.commit_image`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from glandseg.infer.parallel import dask_client
from glandseg.report.batch import STATE_DIR, commit_image

__all__ = ["dask_client", "predict_slide_file"]


def predict_slide_file(out: Path, path: Path, predictor: Any, mpp: float | None, mode: str,
                       progress: bool, client=None, threads: int | None = None) -> int | None:
    """One whole slide or large image → its outputs (:mod:`glandseg.infer.slide`); the
    number of glands, or ``None`` if complete outputs appeared meanwhile (``mode="skip"``).
    The window cache is removed once the outputs are committed. ``client``: where the
    windows run (a Dask client or an executor; ``None``: here), ``threads`` network
    threads per task."""
    from glandseg.data.slide import open_slide
    from glandseg.infer.slide import predict_slide

    with open_slide(path) as slide:
        result = predict_slide(predictor, slide, out / STATE_DIR / "slides" / path.stem,
                               input_mpp=mpp, progress=progress, client=client,
                               threads=threads)
        if not commit_image(out, path.stem, path, None, None, result.mpp, mode, slide=result):
            return None
    result.remove_cache()
    for folder in (result.cache_dir.parent, result.cache_dir.parent.parent):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    return result.n_glands
