"""Whole slides and large images, read lazily by region (no full-resolution canvas).

:func:`open_slide` gives a :class:`Slide` for

- a pyramidal or tiled TIFF (OME-TIFF, generic SubIFD/multi-page pyramids, Aperio SVS,
  Hamamatsu NDPI as far as tifffile reads them): regions are decoded tile by tile (or strip
  by strip) straight from the file with tifffile, only the tiles a region touches;
- an OpenSlide format (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.vms``, ``.bif``, ...)
  through ``openslide-python`` when it is installed (optional: ``pip install
  'glandseg[slides]'``); without it the TIFF-based ones go through tifffile;
- any other image (PNG, JPEG, BMP, WebP, a single-strip compressed TIFF): these cannot be
  read by region, so they are decoded whole as ``uint8`` (3 bytes/px, no float canvas)
  when that fits in memory (:data:`MAX_LOAD_FRACTION` of the available RAM), else a
  one-line :class:`GlandsegError` says to convert the file to a tiled pyramidal TIFF.

Pixels come back as RGB ``uint8 (h, w, 3)``; level 0 is the full resolution. Coordinates
are ``(row, col)`` pixel indices of level 0 unless said otherwise.

:meth:`Slide.read_at` resamples a region to any scale (``zoom`` = output px per level-0 px)
from the best pyramid level, with a global pixel grid: output pixel ``(r, c)`` of the frame
at ``zoom`` covers level-0 ``[r / zoom, (r + 1) / zoom)``, whatever region it is read in,
so neighbouring regions line up exactly.

:func:`write_pyramid` writes a tiled pyramidal TIFF tile by tile (labels or RGB), so its
memory is one tile whatever the image size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from glandseg import GlandsegError
from glandseg.data.io import as_rgb8, exif_upright, file_problem, plausible_mpp, tiff_mpp

log = logging.getLogger(__name__)

#: Whole-slide formats read by OpenSlide (when installed); those also TIFF-based are read
#: by tifffile otherwise.
SLIDE_EXTS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_EXTS = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".ome.tif")
#: An image with more pixels than this (4096², level 0) goes the whole-slide way.
LARGE_PIXELS = 4096 * 4096
#: A non-tiled image is decoded whole only if 3 bytes/px fit in this fraction of free RAM.
MAX_LOAD_FRACTION = 0.5
#: TIFF segments (tiles, strips) larger than this are not "by region" (one huge strip):
#: such a page is decoded whole, within :func:`load_limit`.
MAX_SEGMENT_PIXELS = 4096 * 4096


def _openslide():
    """The ``openslide`` module, or ``None`` when it (or its library) is not installed."""
    try:
        import openslide  # noqa: PLC0415  (optional dependency)
    except Exception:  # ImportError, or OSError when the C library is missing
        return None
    return openslide


@contextlib.contextmanager
def _pil_unbounded() -> Iterator[None]:
    """Pillow's decompression-bomb check off (sizes are checked here instead)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _is_tiff(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts with a TIFF/BigTIFF header (a FIFO or
    device is never opened: reading one would block)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")


class Slide:
    """A lazily read image pyramid (base class; see :func:`open_slide`).

    Attributes: ``path``; ``levels``: ``[(H, W), ...]`` level sizes, level 0 first;
    ``mpp``: level-0 µm/px from the file's metadata or ``None``; ``mpp_source``: where it
    came from (or why there is none); ``kind``: ``"tiff"``, ``"openslide"`` or ``"array"``;
    ``pyramidal``: more than one level.
    """

    kind = "base"

    def __init__(self, path: Path, levels: list[tuple[int, int]]) -> None:
        self.path = Path(path)
        self.levels = [(int(h), int(w)) for h, w in levels]
        self.mpp: float | None = None
        self.mpp_source = "no resolution metadata"

    # -- geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of level 0."""
        return self.levels[0]

    @property
    def pyramidal(self) -> bool:
        return len(self.levels) > 1

    def downsample(self, level: int) -> tuple[float, float]:
        """Level-0 px per level px, ``(rows, cols)``."""
        H, W = self.levels[0]
        h, w = self.levels[level]
        return H / h, W / w

    def best_level(self, zoom: float) -> int:
        """The coarsest level still at least as fine as ``zoom`` (output px per level-0 px)."""
        want = 1.0 / zoom
        best = 0
        for i in range(len(self.levels)):
            d = max(self.downsample(i))
            if d <= want * (1 + 1e-3):
                best = i if d >= max(self.downsample(best)) else best
        return best

    # -- pixels ---------------------------------------------------------------------
    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        raise NotImplementedError

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``uint8 (h, w, 3)`` RGB of level ``level`` from ``(y, x)`` (that level's px);
        parts outside the image are edge-replicated."""
        H, W = self.levels[level]
        y0, x0, y1, x1 = max(0, y), max(0, x), min(H, y + h), min(W, x + w)
        if y1 <= y0 or x1 <= x0:  # wholly outside: the nearest edge pixel
            y0, x0 = min(max(y, 0), H - 1), min(max(x, 0), W - 1)
            y1, x1 = y0 + 1, x0 + 1
        a = self._read(level, y0, x0, y1 - y0, x1 - x0)
        pad = ((y0 - y, y + h - y1), (x0 - x, x + w - x1), (0, 0))
        if any(p for pair in pad[:2] for p in pair):
            a = np.pad(a, pad, mode="edge")
        return a

    def read_at(self, zoom: float, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``uint8 (h, w, 3)``: the region ``[y, y + h) x [x, x + w)`` of the frame at
        ``zoom`` (output px per level-0 px; 1 = full resolution), resampled bilinearly with
        antialiasing from the best level (global pixel grid, see the module doc)."""
        level = self.best_level(zoom)
        dy, dx = self.downsample(level)
        fy, fx = 1.0 / (zoom * dy), 1.0 / (zoom * dx)  # level px per output px
        by0, by1, bx0, bx1 = y * fy, (y + h) * fy, x * fx, (x + w) * fx
        if abs(fy - 1) < 1e-9 and abs(fx - 1) < 1e-9:
            return self.read_region(level, y, x, h, w)
        ry0, rx0 = math.floor(by0) - 2, math.floor(bx0) - 2
        ry1, rx1 = math.ceil(by1) + 2, math.ceil(bx1) + 2
        region = self.read_region(level, ry0, rx0, ry1 - ry0, rx1 - rx0)
        im = Image.fromarray(region)
        out = im.resize((w, h), Image.Resampling.BILINEAR,
                        box=(bx0 - rx0, by0 - ry0, bx1 - rx0, by1 - ry0))
        return np.array(out)  # writable (torch.from_numpy wants it)

    def thumbnail(self, max_side: int = 2048, block: int = 4096) -> tuple[np.ndarray, float]:
        """``(uint8 (h, w, 3), zoom)``: the whole image with its longer side ``max_side``
        (never upscaled), from the best level, read in blocks of at most ``block``² px of
        that level (memory stays bounded when the only level is a huge level 0)."""
        H, W = self.shape
        zoom = min(1.0, max_side / max(H, W))
        h, w = max(1, round(H * zoom)), max(1, round(W * zoom))
        out = np.empty((h, w, 3), np.uint8)
        d = min(self.downsample(self.best_level(zoom)))  # level px per output px: 1/(zoom d)
        step = max(16, int(block * zoom * d))
        for y in range(0, h, step):
            for x in range(0, w, step):
                bh, bw = min(step, h - y), min(step, w - x)
                out[y:y + bh, x:x + bw] = self.read_at(zoom, y, x, bh, bw)
        return out, zoom

    def close(self) -> None:
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TiffSlide(Slide):
    """A TIFF read with tifffile, segment by segment (tiles or strips), level by level."""

    kind = "tiff"

    def __init__(self, path: Path) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(path)
        try:
            series = self._tif.series[0]
            pages = [lvl.keyframe for lvl in series.levels]
            levels = []
            for p in pages:
                shape = p.shape
                if p.planarconfig == 2 and len(shape) == 3:  # (S, H, W)
                    shape = (shape[1], shape[2], shape[0])
                if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
                    raise GlandsegError(f"{path}: TIFF of shape {p.shape} is not an RGB or grey "
                                        "image; export the slide as RGB")
                levels.append(shape[:2])
            super().__init__(path, levels)
            self._pages = pages
            self._tiles: OrderedDict = OrderedDict()
            self._tile_cache_bytes = 0
            self._whole: tuple[int, np.ndarray] | None = None
            self.mpp, self.mpp_source = plausible_mpp(*tiff_mpp(self._tif))
        except Exception:
            self._tif.close()
            raise

    def by_region(self, level: int = 0) -> bool:
        """Whether a region of ``level`` can be decoded without decoding the whole page."""
        p = self._pages[level]
        if p.compression == 1 and p.is_contiguous and p.planarconfig == 1:
            return True
        if p.planarconfig != 1:
            return False
        th, tw = (p.tilelength, p.tilewidth) if p.is_tiled else (p.rowsperstrip, p.imagewidth)
        return th * tw <= MAX_SEGMENT_PIXELS

    def _segment(self, page, index: int) -> np.ndarray:
        key = (id(page), index)
        hit = self._tiles.get(key)
        if hit is not None:
            self._tiles.move_to_end(key)
            return hit
        fh = self._tif.filehandle
        fh.seek(page.dataoffsets[index])
        data = fh.read(page.databytecounts[index])
        try:
            seg, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:
            raise GlandsegError(_decode_error(self.path, page, exc)) from exc
        seg = np.asarray(seg).reshape(shape[-3:] if len(shape) >= 3 else shape)
        self._tiles[key] = seg
        self._tile_cache_bytes += seg.nbytes
        while self._tile_cache_bytes > 64 << 20 and len(self._tiles) > 1:
            _, old = self._tiles.popitem(last=False)
            self._tile_cache_bytes -= old.nbytes
        return seg

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        p = self._pages[level]
        H, W = self.levels[level]
        if not self.by_region(level):
            if self._whole is None or self._whole[0] != level:
                if H * W * 3 > load_limit():
                    raise GlandsegError(_not_by_region(self.path, W, H))
                a = p.asarray()
                if p.planarconfig == 2 and a.ndim == 3:
                    a = np.moveaxis(a, 0, -1)
                self._whole = (level, as_rgb8(a, self.path))
            return self._whole[1][y:y + h, x:x + w]
        samples = p.samplesperpixel
        if p.compression == 1 and p.is_contiguous:  # uncompressed: read rows directly
            fh = self._tif.filehandle
            dt = np.dtype(p.dtype).newbyteorder(self._tif.byteorder)
            row_bytes = W * samples * dt.itemsize
            out = np.empty((h, w, samples), p.dtype)
            for r in range(h):
                fh.seek(p.dataoffsets[0] + (y + r) * row_bytes + x * samples * dt.itemsize)
                buf = fh.read(w * samples * dt.itemsize)
                out[r] = np.frombuffer(buf, dt).reshape(w, samples)
            return as_rgb8(out, self.path)
        if p.is_tiled:
            th, tw = p.tilelength, p.tilewidth
        else:
            th, tw = p.rowsperstrip, W
        ncols = math.ceil(W / tw)
        out = np.empty((h, w, samples), p.dtype)
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                seg = self._segment(p, ty * ncols + tx)
                if seg.ndim == 2:
                    seg = seg[..., None]
                sy0, sx0 = ty * th, tx * tw
                cy0, cx0 = max(y, sy0), max(x, sx0)
                cy1 = min(y + h, sy0 + seg.shape[0], H)
                cx1 = min(x + w, sx0 + seg.shape[1], W)
                out[cy0 - y:cy1 - y, cx0 - x:cx1 - x] = seg[cy0 - sy0:cy1 - sy0,
                                                            cx0 - sx0:cx1 - sx0, :samples]
        return as_rgb8(out, self.path)

    def close(self) -> None:
        self._tif.close()


def _not_by_region(path: Path, w: int, h: int) -> str:
    return (f"{path}: this TIFF ({w}x{h} px, not tiled) cannot be read by region and is "
            "too large to decode whole; convert it to a tiled pyramidal TIFF, "
            "e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression deflate`")


def _decode_error(path: Path, page, exc: Exception) -> str:
    comp = getattr(page.compression, "name", str(page.compression))
    why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    hint = ("install the codecs (`pip install 'glandseg[slides]'`: imagecodecs, OpenSlide)"
            if "imagecodecs" in str(exc) or isinstance(exc, ValueError | NotImplementedError)
            else "the file may be damaged; re-export it")
    return f"{path}: cannot decode a {comp} tile ({why}); {hint}"


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide (levels and ``openslide.mpp-x`` from it)."""

    kind = "openslide"

    def __init__(self, path: Path) -> None:
        osl = _openslide()
        self._osl = osl.OpenSlide(str(path))
        super().__init__(path, [(h, w) for w, h in self._osl.level_dimensions])
        self._ds = list(self._osl.level_downsamples)
        mpp = self._osl.properties.get("openslide.mpp-x")
        if mpp:
            self.mpp, self.mpp_source = float(mpp), "OpenSlide openslide.mpp-x"

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        d = self._ds[level]
        im = self._osl.read_region((round(x * d), round(y * d)), level, (w, h))
        rgba = np.asarray(im)
        alpha = rgba[..., 3:4].astype(np.uint16)  # transparent (outside the scan) → white
        rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha)) // 255
        return rgb.astype(np.uint8)

    def close(self) -> None:
        self._osl.close()


class ArraySlide(Slide):
    """An image decoded whole as ``uint8 (H, W, 3)`` (formats that cannot be read by region)."""

    kind = "array"

    def __init__(self, path: Path, image: np.ndarray) -> None:
        super().__init__(path, [image.shape[:2]])
        self.image = image

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.image[y:y + h, x:x + w]


def image_pixels(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of level 0 from the header only (also for images over Pillow's 179 MP
    decompression-bomb limit). Raises :class:`GlandsegError` if unreadable."""
    path = Path(path)
    why = file_problem(path)
    if why:
        raise GlandsegError(f"{path}: {why}")
    if path.suffix.lower() in SLIDE_EXTS and not _is_tiff(path):
        osl = _openslide()
        if osl is None:
            raise GlandsegError(_no_openslide(path))
        with osl.OpenSlide(str(path)) as s:
            w, h = s.dimensions
        return h, w
    try:
        if _is_tiff(path):
            with open_slide(path) as s:
                return s.shape
        with _pil_unbounded(), Image.open(path) as im:
            return im.height, im.width
    except GlandsegError:
        raise
    except Exception as exc:
        raise GlandsegError(f"{path}: cannot read the image header ({type(exc).__name__}: "
                            f"{exc}); the file is unreadable, re-export it") from exc


def is_large(path: str | os.PathLike) -> bool:
    """Whether ``path`` goes the whole-slide way: a slide format, a pyramidal TIFF, or more
    than :data:`LARGE_PIXELS` px. Reads the header only; an unreadable file is ``False``
    (reading it as an image then reports the problem)."""
    path = Path(path)
    if path.suffix.lower() in SLIDE_EXTS:
        return True
    try:
        if _is_tiff(path):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                s = tif.series[0]
                if len(s.levels) > 1:
                    return True
                shape = s.keyframe.shape
                hw = shape[1:3] if s.keyframe.planarconfig == 2 and len(shape) == 3 else shape[:2]
                return int(hw[0]) * int(hw[1]) > LARGE_PIXELS
        h, w = image_pixels(path)
        return h * w > LARGE_PIXELS
    except Exception:
        return False


def _no_openslide(path: Path) -> str:
    return (f"{path}: this slide format needs OpenSlide; install it with "
            "`pip install 'glandseg[slides]'` (openslide-python + openslide-bin)")


def load_limit() -> int:
    """Bytes an image that cannot be read by region may take decoded whole:
    :data:`MAX_LOAD_FRACTION` of the available RAM."""
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover
        avail = 8 << 30
    return int(avail * MAX_LOAD_FRACTION)


def open_slide(path: str | os.PathLike, max_bytes: int | None = None) -> Slide:
    """Open ``path`` for reading by region (see the module doc for the formats).

    ``max_bytes``: the most a non-tiled image may take decoded whole (default
    :data:`MAX_LOAD_FRACTION` of the available RAM). Raises :class:`GlandsegError` (one
    line, naming the file and the fix) for a missing, unreadable or too large file."""
    path = Path(path)
    why = file_problem(path)
    if why:
        raise GlandsegError(f"{path}: {why}")
    osl = _openslide()
    ext = path.suffix.lower()
    if ext in SLIDE_EXTS and osl is not None:
        try:
            if osl.OpenSlide.detect_format(str(path)):
                return OpenSlideSlide(path)
        except Exception as exc:
            raise GlandsegError(f"{path}: OpenSlide cannot read this slide ({exc}); the "
                                "file is damaged or incomplete, re-export it") from exc
        if not _is_tiff(path):
            raise GlandsegError(f"{path}: OpenSlide does not recognise this file as a slide; "
                                "the file is damaged or incomplete (a .mrxs needs its data "
                                "folder beside it), re-export it")
    if _is_tiff(path):
        try:
            return TiffSlide(path)
        except GlandsegError:
            raise
        except Exception as exc:
            raise GlandsegError(f"{path}: cannot read this TIFF ({type(exc).__name__}: {exc}); "
                                "the file is damaged or not an image, re-export it") from exc
    if ext in SLIDE_EXTS:
        raise GlandsegError(_no_openslide(path))
    h, w = image_pixels(path)
    limit = max_bytes if max_bytes is not None else load_limit()
    if h * w * 3 > limit:
        raise GlandsegError(
            f"{path}: {w}x{h} px cannot be read by region ({ext or 'this'} format) and needs "
            f"{h * w * 3 / 2**30:.1f} GiB decoded (limit {limit / 2**30:.1f} GiB); convert it "
            "to a tiled pyramidal TIFF, e.g. `vips tiffsave IN OUT.tif --tile --pyramid "
            "--compression deflate`")
    from glandseg.data.io import read_mpp

    try:
        with _pil_unbounded(), Image.open(path) as im:
            im.load()
            up = exif_upright(im)  # displayed orientation, as read_image
            rgb = up if up.mode == "RGB" else up.convert("RGB")
            image = np.asarray(rgb)
    except Exception as exc:
        raise GlandsegError(f"{path}: cannot read the image ({type(exc).__name__}: {exc}); "
                            "the file is unreadable or truncated, re-export it") from exc
    s = ArraySlide(path, image)
    s.mpp, s.mpp_source = read_mpp(path)
    return s


# -- writing --------------------------------------------------------------------------

def pyramid_shapes(shape: tuple[int, int], min_side: int = 512) -> list[tuple[int, int]]:
    """Level sizes of a 2x pyramid over ``shape`` until the longer side is ≤ ``min_side``."""
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def write_pyramid(path: str | os.PathLike, shape: tuple[int, int],
                  tile_fn: Callable[[int, int, int, int, int], np.ndarray], dtype,
                  samples: int = 1, tile: int = 512, min_side: int = 512,
                  mpp: float | None = None, compression: str = "zlib",
                  ome: bool = False) -> list[tuple[int, int]]:
    """Write a tiled pyramidal TIFF (level 0 plus 2x reductions) tile by tile.

    ``tile_fn(level, y, x, h, w)`` returns the pixels of that level's region (``dtype``
    ``(h, w)`` for ``samples=1``, e.g. labels, 0 = background; ``(h, w, 3)`` for RGB),
    called once per tile in row-major order, so memory stays one tile whatever the size.
    ``mpp``: level-0 µm/px, written as the resolution tags (pixels per cm).
    ``ome``: an OME-TIFF (OME-XML with ``PhysicalSizeX/Y``, reductions in SubIFDs: what
    QuPath/Bio-Formats, napari and tifffile read as one pyramid); otherwise the reductions
    are top-level pages marked reduced-resolution (what OpenSlide's generic TIFF reader
    and tifffile read as a pyramid). Returns the level sizes. The caller writes to a
    temporary path and renames it (atomic output)."""
    import tifffile

    shapes = pyramid_shapes(shape, min_side)
    photometric = "rgb" if samples == 3 else "minisblack"
    first: dict = {"photometric": photometric}
    if mpp:
        first.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    if ome:
        meta: dict = {"axes": "YXS" if samples == 3 else "YX"}
        if mpp:
            meta.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm",
                        PhysicalSizeYUnit="µm")
        first.update(subifds=len(shapes) - 1, metadata=meta)
    else:
        first["metadata"] = None

    def tiles(level: int, h: int, w: int):
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                yield np.ascontiguousarray(tile_fn(level, y, x, min(tile, h - y), min(tile, w - x)),
                                           dtype=dtype)

    full = (lambda h, w: (h, w, 3)) if samples == 3 else (lambda h, w: (h, w))
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tw:
        for level, (h, w) in enumerate(shapes):
            kw = first if level == 0 else {"photometric": photometric, "subfiletype": 1,
                                           "metadata": None}
            tw.write(tiles(level, h, w), shape=full(h, w), dtype=dtype, tile=(tile, tile),
                     compression=compression, **kw)
    return shapes
