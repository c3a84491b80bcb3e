"""Outputs of a segmented whole slide or large image, written region by region.

From a :class:`glandseg.infer.slide.SlideLabels` (labels ``uint32``, 0 = background, read
back by region, never as one canvas):

- ``<stem>.tif``: the labels at the slide's full resolution (level 0) as a tiled pyramidal
  OME-TIFF (``uint32``, zlib, 512² tiles, 2x reductions in SubIFDs, ``PhysicalSizeX/Y``
  and resolution tags when the µm/px is known): opens in QuPath (Bio-Formats), napari,
  tifffile;
- ``<stem>.geojson``: QuPath GeoJSON, one feature per gland, polygons in level-0 pixel
  coordinates (QuPath's: origin at the top-left corner of the slide), streamed to disk;
- ``<stem>_overlay.png``: gland outlines on the slide's thumbnail (longer side
  ``thumb_side``);
- the ``glands.csv`` rows (returned), measured as :func:`glandseg.report.outputs.measure`
  does for an image, in level-0 px and µm (µm columns empty without a resolution).

Glands are measured and outlined at the model's resolution (the frame) and the figures
converted to level-0 px (lengths / ``zoom``, areas / ``zoom²``); at the model's own
resolution (``zoom`` = 1, e.g. a 20x GlaS-like scan) they are exactly those of an image.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from glandseg.data.io import atomic_path, write_image
from glandseg.data.slide import write_pyramid
from glandseg.report.outputs import (
    GLAND_CLASS,
    UUID_NAMESPACE,
    geojson_measurements,
    gland_polygons,
    measure,
    overlay,
)

log = logging.getLogger(__name__)

#: Outputs of one whole slide or large image (the labels as a pyramidal TIFF).
SLIDE_SUFFIXES: tuple[str, ...] = (".tif", "_overlay.png", ".geojson")
#: What a slide result must offer (:class:`glandseg.infer.slide.SlideLabels`; ``report``
#: writes files and never imports inference): ``shape``, ``zoom``, ``thumbnail``,
#: ``thumb_zoom``, ``level0(y, x, h, w, down)`` and ``gland_masks()``, readable from two
#: threads at once (:func:`write_slide_outputs` writes the label pyramid in a thread).
SlideLabels = Any

_PX_LENGTH = ("perimeter_px", "major_axis_px", "minor_axis_px")


def slide_output_names(stem: str) -> list[str]:
    """File names of one slide's outputs: ``<stem>.tif``, ``<stem>_overlay.png``,
    ``<stem>.geojson``."""
    return [f"{stem}{s}" for s in SLIDE_SUFFIXES]


def gland_row(mask: np.ndarray, offset: tuple[int, int], gid: int, zoom: float,
              model_mpp: float | None, image: str) -> dict[str, Any]:
    """The ``glands.csv`` row of one gland: ``mask`` ``bool (h, w)`` at the frame's
    resolution with its top-left at frame ``offset = (row, col)``; ``zoom`` = frame px per
    level-0 px; ``model_mpp``: the frame's µm/px (``None``: no µm columns)."""
    row = measure(mask.astype(np.uint8), model_mpp, image=image)[0]
    row["gland_id"] = int(gid)
    cy, cx = row["centroid_y"] + offset[0], row["centroid_x"] + offset[1]
    row["centroid_y"] = (cy + 0.5) / zoom - 0.5
    row["centroid_x"] = (cx + 0.5) / zoom - 0.5
    if zoom != 1.0:
        row["area_px"] = row["area_px"] / (zoom * zoom)
        for k in _PX_LENGTH:
            row[k] = row[k] / zoom
    return row


def _feature(gid: int, polygons: list, row: dict[str, Any], image: str) -> dict[str, Any]:
    geometry = ({"type": "Polygon", "coordinates": polygons[0]} if len(polygons) == 1
                else {"type": "MultiPolygon", "coordinates": polygons})
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(UUID_NAMESPACE, f"{image}/{gid}")),
        "geometry": geometry,
        "properties": {
            "objectType": "annotation",
            "name": f"Gland {gid}",
            "classification": {"name": GLAND_CLASS["name"], "color": list(GLAND_CLASS["color"])},
            "isLocked": False,
            "measurements": geojson_measurements(row),
            "metadata": {"image": image, "gland_id": str(gid)},
        },
    }


def _scaled(polygons: list, zoom: float) -> list:
    if zoom == 1.0:
        return polygons
    return [[np.round(np.asarray(r) / zoom, 3).tolist() for r in poly] for poly in polygons]


def write_geojson_and_rows(path: str | os.PathLike, result: SlideLabels, stem: str,
                           mpp: float | None, tolerance: float = 0.5) -> list[dict[str, Any]]:
    """Stream the GeoJSON of every gland to ``path`` (atomically) and return the rows."""
    model_mpp = None if mpp is None else mpp / result.zoom
    rows = []
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        first = True
        for gid, mask, off in result.gland_masks():
            if not mask.any():
                continue
            row = gland_row(mask, off, gid, result.zoom, model_mpp, stem)
            rows.append(row)
            polygons = gland_polygons(mask, off, tolerance)
            if not polygons:
                log.warning("%s: gland %d has no outline; left out of the GeoJSON", stem, gid)
                continue
            feat = _feature(gid, _scaled(polygons, result.zoom), row, stem)
            f.write(("\n" if first else ",\n") + json.dumps(feat, ensure_ascii=False))
            first = False
        f.write("\n]}\n")
    return rows


def write_label_pyramid(path: str | os.PathLike, result: SlideLabels, mpp: float | None,
                        tile: int = 512, stop: threading.Event | None = None) -> None:
    """The labels at level-0 resolution as a tiled pyramidal ``uint32`` TIFF, atomically.
    ``stop``: when set (from another thread), give up at the next tile (nothing written)."""
    def tile_fn(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        if stop is not None and stop.is_set():
            raise RuntimeError(f"{path}: label pyramid abandoned")
        return result.level0(y, x, h, w, down=float(2 ** level))

    with atomic_path(path) as tmp:
        write_pyramid(tmp, result.shape, tile_fn, np.uint32, tile=tile, mpp=mpp, ome=True)


def slide_overlay(result: SlideLabels) -> np.ndarray:
    """Gland outlines on the thumbnail: ``uint8 (h, w, 3)``."""
    thumb = result.thumbnail
    h, w = thumb.shape[:2]
    labels = result.level0(0, 0, h, w, down=1.0 / result.thumb_zoom)
    return overlay(thumb, labels, thickness=2)


def write_slide_outputs(out_dir: str | os.PathLike, stem: str, result: SlideLabels,
                        mpp: float | None) -> list[dict[str, Any]]:
    """Write ``<stem>.geojson``, ``<stem>_overlay.png`` and ``<stem>.tif`` (module doc) into
    ``out_dir``, each atomically; return the ``glands.csv`` rows. ``mpp``: level-0 µm/px
    for the µm columns and the TIFF's resolution tags (``None``: none). The TIFF is
    written in a second thread meanwhile (decompressing label chunks and zlib-compressing
    tiles release the GIL: 40k² synthetic slide, 2 cores: 83 → 69 s)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="label-pyramid") as pool:
        pyramid = pool.submit(write_label_pyramid, out / f"{stem}.tif", result, mpp, stop=stop)
        try:
            rows = write_geojson_and_rows(out / f"{stem}.geojson", result, stem, mpp)
            write_image(out / f"{stem}_overlay.png", slide_overlay(result))
        except BaseException:  # an error or Ctrl-C here: stop the pyramid, report this one
            stop.set()
            wait([pyramid])
            raise
        pyramid.result()
    log.debug("%s: %d glands written to %s", stem, len(rows), out)
    return rows
