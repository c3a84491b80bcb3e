"""QuPath GeoJSON annotations as label images (training data, ground truth, our own outputs).

A pathologist corrects glandseg's ``<stem>.geojson`` in QuPath (or draws glands from
scratch) and exports them with *File > Export objects as GeoJSON*; this module reads such a
file back as an instance label image.

What is read:

- a ``FeatureCollection``, a plain JSON list of ``Feature`` objects (QuPath's export without
  "Export as FeatureCollection"), a single ``Feature`` or a bare geometry;
- ``Polygon`` and ``MultiPolygon`` geometries (``GeometryCollection`` members too), holes
  included; points and lines are left out with a warning;
- ``properties.objectType`` ``annotation`` or ``detection`` (or none, as QuPath 0.2 wrote);
  ``properties.classification`` as ``{"name": ...}``, ``{"names": [...]}`` (QuPath 0.4+
  derived classes) or a plain string; ``measurements`` as a dict or QuPath 0.2's list of
  ``{"name", "value"}`` (neither is needed, both are accepted).

What a polygon means, by its classification name (case-insensitive):

- ``Region*`` (QuPath's built-in ``Region*`` class, or any name starting with ``Region``):
  where annotation is complete. When a file has regions, only the pixels inside them are
  learned from; everything outside is *ignored* (no loss);
- ``Ignore*`` (any name starting with ``Ignore``): left out of the loss;
- anything else (``Gland``, no class, ``Tumor``, ...): one gland.

Coordinates are QuPath's: full-resolution pixels, origin at the top-left *corner* of the
image, so pixel ``(row, col)`` covers ``[col, col + 1] x [row, row + 1]`` and is part of a
polygon when its centre ``(col + 0.5, row + 0.5)`` is inside it (even-odd rule). This is the
convention :func:`glandseg.report.outputs.to_geojson` writes, so our own GeoJSON reads back
as the label image it came from (gland ids kept via ``metadata.gland_id``).

Problems are one line each, naming the file and the feature (1-based, in file order, with
its name or class): an unreadable or empty file or broken coordinates are a
:class:`~glandseg.GlandsegError`; self-intersecting polygons (rasterised with the even-odd
rule), overlapping glands (the later feature wins the shared pixels), polygons outside the
image (left out) and unsupported geometries (left out) are warnings, logged and kept in
:attr:`Annotations.warnings` / :attr:`Raster.warnings` for ``glandseg data check``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glandseg import GlandsegError

log = logging.getLogger(__name__)

#: File suffixes read as GeoJSON annotations.
GEOJSON_EXTS = (".geojson",)
#: Kinds of shape, from the classification name.
GLAND, REGION, IGNORE = "gland", "region", "ignore"
#: Rings with more vertices than this are not checked for self-intersection (cost n²).
MAX_CHECKED_VERTICES = 10_000


def is_geojson(path: str | os.PathLike) -> bool:
    """True when ``path`` has a GeoJSON suffix (:data:`GEOJSON_EXTS`)."""
    return Path(path).suffix.lower() in GEOJSON_EXTS


@dataclass(frozen=True)
class Shape:
    """One polygonal feature of a GeoJSON file.

    ``index``: 1-based position of the feature in the file; ``kind``: :data:`GLAND`,
    :data:`REGION` or :data:`IGNORE`; ``polygons``: a list of polygons, each a list of rings
    ``[exterior, *holes]``, each ring ``float64 (N, 2)`` of ``(x, y)`` in QuPath's
    pixel-corner coordinates; ``gland_id``: the id glandseg wrote in ``metadata.gland_id``
    (``None`` for other files); ``label``: how messages name the feature."""

    index: int
    kind: str
    polygons: list[list[np.ndarray]]
    gland_id: int | None = None
    label: str = ""

    def where(self) -> str:
        """``"feature 3 (Gland 7)"``: how a message names this shape."""
        return f"feature {self.index}" + (f" ({self.label})" if self.label else "")

    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of all exterior rings."""
        pts = np.concatenate([poly[0] for poly in self.polygons])
        return (float(pts[:, 0].min()), float(pts[:, 1].min()),
                float(pts[:, 0].max()), float(pts[:, 1].max()))


@dataclass
class Annotations:
    """The shapes of one GeoJSON file and the warnings found while reading it."""

    path: Path
    shapes: list[Shape]
    warnings: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Shape]:
        """The shapes of one kind (:data:`GLAND`, :data:`REGION`, :data:`IGNORE`)."""
        return [s for s in self.shapes if s.kind == kind]

    @property
    def glands(self) -> list[Shape]:
        return self.of_kind(GLAND)

    @property
    def regions(self) -> list[Shape]:
        return self.of_kind(REGION)

    @property
    def ignores(self) -> list[Shape]:
        return self.of_kind(IGNORE)


@dataclass
class Raster:
    """A rasterised GeoJSON file: ``labels`` ``int32 (H, W)`` (0 = background, 1..N = one
    gland each), ``ignore`` ``bool (H, W)`` (True = left out of the loss: inside an
    ``Ignore*`` polygon or, when the file has ``Region*`` polygons, outside all of them) or
    ``None`` when nothing is ignored, and the warnings of reading and rasterising."""

    labels: np.ndarray
    ignore: np.ndarray | None
    warnings: list[str] = field(default_factory=list)
    n_regions: int = 0
    n_ignores: int = 0


def _warn(warnings: list[str], msg: str) -> None:
    log.warning("%s", msg)
    warnings.append(msg)


def _class_name(props: dict) -> str:
    """The classification name of a feature's properties (``""`` when unclassified)."""
    c = props.get("classification")
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        if isinstance(c.get("name"), str):
            return c["name"]
        names = c.get("names")
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return ": ".join(names)
    return ""


def _kind(class_name: str) -> str:
    low = class_name.strip().lower()
    if low.startswith("region"):
        return REGION
    if low.startswith("ignore"):
        return IGNORE
    return GLAND


def _gland_id(props: dict) -> int | None:
    meta = props.get("metadata")
    if not isinstance(meta, dict):
        return None
    try:
        v = int(str(meta.get("gland_id")))
    except ValueError:
        return None
    return v if v > 0 else None


def _ring(coords: Any, path: Path, where: str) -> np.ndarray:
    """A GeoJSON linear ring → ``float64 (N, 2)``, closed, consecutive duplicates removed."""
    try:
        arr = np.array([[float(p[0]), float(p[1])] for p in coords], dtype=np.float64)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise GlandsegError(f"{path}: {where}: coordinates are not [x, y] number pairs "
                            f"({exc}); re-export the annotations from QuPath") from exc
    if arr.size and not np.isfinite(arr).all():
        raise GlandsegError(f"{path}: {where}: coordinates are not finite numbers; "
                            "re-export the annotations from QuPath")
    if len(arr) > 1:
        keep = np.ones(len(arr), dtype=bool)
        keep[1:] = np.any(arr[1:] != arr[:-1], axis=1)
        arr = arr[keep]
    if len(arr) and not np.array_equal(arr[0], arr[-1]):
        arr = np.vstack([arr, arr[:1]])
    return arr


def _polygons(geom: Any, path: Path, where: str, warnings: list[str]) -> list[list[np.ndarray]]:
    """The polygons of a geometry (``Polygon``, ``MultiPolygon``, ``GeometryCollection``)."""
    if geom is None:
        _warn(warnings, f"{path}: {where} has no geometry; left out")
        return []
    if not isinstance(geom, dict) or not isinstance(geom.get("type"), str):
        raise GlandsegError(f"{path}: {where}: geometry is not a GeoJSON geometry object; "
                            "re-export the annotations from QuPath")
    t = geom["type"]
    if t == "GeometryCollection":
        out = []
        for g in geom.get("geometries") or []:
            out += _polygons(g, path, where, warnings)
        return out
    coords = geom.get("coordinates")
    if t == "Polygon":
        polys = [coords]
    elif t == "MultiPolygon":
        polys = coords
    else:
        _warn(warnings, f"{path}: {where} is a {t}, not a polygon; left out (draw glands "
                        "as areas: polygon, brush or wand tool)")
        return []
    if not isinstance(polys, list):
        raise GlandsegError(f"{path}: {where}: {t} coordinates are not a list; re-export "
                            "the annotations from QuPath")
    out = []
    for poly in polys:
        if not isinstance(poly, list) or not poly:
            continue
        rings = [_ring(r, path, where) for r in poly]
        if len(rings[0]) < 4 or abs(ring_area(rings[0])) == 0:
            _warn(warnings, f"{path}: {where} has a polygon without area; left out")
            continue
        out.append([rings[0]] + [r for r in rings[1:] if len(r) >= 4])
    return out


def ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area of a closed ring ``(N, 2)`` of ``(x, y)`` points."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def self_intersection(ring: np.ndarray) -> tuple[float, float] | None:
    """A point where two non-adjacent edges of the closed ring ``(N, 2)`` cross properly,
    or ``None`` (touching at a vertex is not reported). Rings longer than
    :data:`MAX_CHECKED_VERTICES` are not checked."""
    a = ring[:-1]
    b = ring[1:]
    n = len(a)
    if n < 4 or n > MAX_CHECKED_VERTICES:
        return None
    d = b - a
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    step = max(1, 2_000_000 // n)
    for s in range(0, n, step):
        i = np.arange(s, min(n, s + step))[:, None]
        j = np.arange(n)[None, :]
        # non-adjacent pairs, each once
        ok = (j > i + 1) & ~((i == 0) & (j == n - 1))
        ok &= (lo[i, 0] <= hi[j, 0]) & (lo[j, 0] <= hi[i, 0])
        ok &= (lo[i, 1] <= hi[j, 1]) & (lo[j, 1] <= hi[i, 1])
        ii, jj = np.nonzero(ok)
        if not len(ii):
            continue
        ii = ii + s

        def cross(u, v):
            return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

        o1 = cross(d[ii], a[jj] - a[ii])
        o2 = cross(d[ii], b[jj] - a[ii])
        o3 = cross(d[jj], a[ii] - a[jj])
        o4 = cross(d[jj], b[ii] - a[jj])
        hit = np.flatnonzero((o1 * o2 < 0) & (o3 * o4 < 0))
        if len(hit):
            k = hit[0]
            t = o3[k] / (o3[k] - o4[k])
            p = a[ii[k]] + t * d[ii[k]]
            return float(p[0]), float(p[1])
    return None


def _features(data: Any, path: Path) -> list[dict]:
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        items = data.get("features")
        if not isinstance(items, list):
            raise GlandsegError(f"{path}: FeatureCollection without a 'features' list; "
                                "re-export the annotations from QuPath")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        items = [data]
    elif isinstance(data, dict) and isinstance(data.get("type"), str) and "coordinates" in data:
        items = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise GlandsegError(f"{path}: not GeoJSON (expected a FeatureCollection, a list of "
                            "Features or a Feature); export with QuPath's File > Export "
                            "objects as GeoJSON")
    return items


def read_geojson(path: str | os.PathLike) -> Annotations:
    """Read the shapes of a QuPath GeoJSON file (see the module doc for what is accepted).

    Raises :class:`GlandsegError` (one line, naming the file and the feature) when the file
    is missing, empty, not JSON, not GeoJSON or has broken coordinates; warnings (logged and
    returned in :attr:`Annotations.warnings`) for shapes left out and self-intersecting
    polygons. An empty ``FeatureCollection`` is valid: an image without glands."""
    path = Path(path)
    if not path.is_file():
        raise GlandsegError(f"{path}: file not found; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GlandsegError(f"{path}: cannot read the GeoJSON ({exc})") from exc
    if not text.strip():
        raise GlandsegError(f"{path}: empty file; export the annotations again from QuPath "
                            "(File > Export objects as GeoJSON), or delete the file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GlandsegError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}); the file is truncated or not GeoJSON, export it "
                            "again from QuPath") from exc
    warnings: list[str] = []
    shapes: list[Shape] = []
    for i, feat in enumerate(_features(data, path), start=1):
        if not isinstance(feat, dict):
            raise GlandsegError(f"{path}: feature {i} is not a GeoJSON Feature object; "
                                "re-export the annotations from QuPath")
        props = feat.get("properties") if isinstance(feat.get("properties"), dict) else {}
        cls = _class_name(props)
        name = props.get("name") if isinstance(props.get("name"), str) else ""
        label = name or cls
        where = f"feature {i}" + (f" ({label})" if label else "")
        polys = _polygons(feat.get("geometry"), path, where, warnings)
        if not polys:
            continue
        shape = Shape(i, _kind(cls), polys, _gland_id(props), label)
        for poly in polys:
            for ring in poly:
                p = self_intersection(ring)
                if p is not None:
                    _warn(warnings, f"{path}: {where}: the outline crosses itself near x={p[0]:.0f}, "
                                    f"y={p[1]:.0f}; rasterised with the even-odd rule (crossed "
                                    "parts may be left out): redraw it in QuPath")
                    break
        shapes.append(shape)
    return Annotations(path, shapes, warnings)


def _fill(shape: Shape, hw: tuple[int, int], offset: tuple[int, int]
          ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The pixels of ``shape`` in an ``(H, W)`` frame whose top-left pixel is ``offset``
    ``(row, col)`` of the full image: ``(bounding-box slices, bool mask of that box)``, or
    ``None`` when no pixel centre is inside."""
    from skimage.draw import polygon as draw_polygon

    H, W = hw
    oy, ox = offset
    x0, y0, x1, y1 = shape.bounds()
    r0, r1 = max(0, int(np.floor(y0 - oy - 0.5))), min(H, int(np.ceil(y1 - oy - 0.5)) + 1)
    c0, c1 = max(0, int(np.floor(x0 - ox - 0.5))), min(W, int(np.ceil(x1 - ox - 0.5)) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    box = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for poly in shape.polygons:
        part = np.zeros_like(box)
        for k, ring in enumerate(poly):
            # pixel (r, c) has its centre at (c + 0.5, r + 0.5): shift into index space
            rr, cc = draw_polygon(ring[:, 1] - oy - 0.5 - r0, ring[:, 0] - ox - 0.5 - c0,
                                  shape=box.shape)
            if k == 0:
                part[rr, cc] = True
            else:
                part[rr, cc] = False
        box |= part
    if not box.any():
        return None
    return (slice(r0, r1), slice(c0, c1)), box


def rasterise(ann: Annotations, shape: tuple[int, int],
              offset: tuple[int, int] = (0, 0)) -> Raster:
    """Rasterise ``ann`` into an ``(H, W)`` frame whose top-left pixel is ``offset``
    ``(row, col)`` of the full image (a whole image: ``(0, 0)``).

    Glands get ids 1..N in file order, or the ``metadata.gland_id`` glandseg wrote when
    every gland has a distinct one (our own GeoJSON reads back with its ids). Where two
    glands overlap, the later feature gets the shared pixels (a warning names both). A
    shape with no pixel centre inside the frame is left out (a warning when the frame is
    the whole image)."""
    H, W = (int(shape[0]), int(shape[1]))
    labels = np.zeros((H, W), dtype=np.int32)
    warnings = list(ann.warnings)
    whole = offset == (0, 0)
    path = ann.path
    glands = ann.glands
    ids = [g.gland_id for g in glands]
    if not (glands and None not in ids and len(set(ids)) == len(ids)):
        ids = list(range(1, len(glands) + 1))
    owner: dict[int, Shape] = {}
    for g, gid in zip(glands, ids, strict=True):
        filled = _fill(g, (H, W), offset)
        if filled is None:
            if whole:
                _warn(warnings, f"{path}: {g.where()} lies outside the {W}x{H} image; "
                                "left out (exported from another image?)")
            continue
        sl, box = filled
        under = labels[sl][box]
        hit = np.unique(under[under > 0])
        for other in hit:
            n = int(np.count_nonzero(under == other))
            _warn(warnings, f"{path}: {g.where()} overlaps {owner[int(other)].where()} by "
                            f"{n} px; the shared pixels go to {g.where()}")
        labels[sl][box] = gid
        owner[gid] = g
    ignore = None
    regions, ignores = ann.regions, ann.ignores
    if regions:
        inside = np.zeros((H, W), dtype=bool)
        for r in regions:
            filled = _fill(r, (H, W), offset)
            if filled is None:
                if whole:
                    _warn(warnings, f"{path}: region {r.where()} lies outside the {W}x{H} "
                                    "image; left out")
                continue
            sl, box = filled
            inside[sl] |= box
        ignore = ~inside
    for r in ignores:
        filled = _fill(r, (H, W), offset)
        if filled is None:
            if whole:
                _warn(warnings, f"{path}: {r.where()} lies outside the {W}x{H} image; left out")
            continue
        if ignore is None:
            ignore = np.zeros((H, W), dtype=bool)
        sl, box = filled
        ignore[sl] |= box
    return Raster(labels, ignore, warnings, len(regions), len(ignores))


def read_geojson_label(path: str | os.PathLike, shape: tuple[int, int]) -> Raster:
    """Read and rasterise a GeoJSON file at ``shape`` ``(H, W)`` (the image's size;
    :func:`glandseg.data.io.read_label` finds it from the image beside the file): a
    :class:`Raster`."""
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise GlandsegError(f"{path}: shape must be (height, width) > 0, got {shape}")
    return rasterise(read_geojson(path), (int(shape[0]), int(shape[1])))


def valid_bbox(ignore: np.ndarray | None, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The bounding box (row and column slices) of the pixels not ignored (the whole frame
    when ``ignore`` is ``None`` or ignores everything)."""
    if ignore is None or ignore.all():
        return slice(0, shape[0]), slice(0, shape[1])
    rows = np.flatnonzero(~ignore.all(axis=1))
    cols = np.flatnonzero(~ignore.all(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
