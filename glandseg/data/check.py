"""Check a GlaS-like data folder: counts, sizes, glands per image, grades, and every
problem file by name (``glandseg data check DIR``).

:func:`check_folder` returns a :class:`CheckReport`; ``str(report)`` is the text the
CLI prints, :meth:`CheckReport.to_dict` the JSON form. Errors make a folder unusable
for training or evaluation (missing or unreadable files, sizes that disagree,
annotations that are not label images); warnings are worth a look (empty annotations,
no ``Grade.csv``, images missing from it).
"""

from __future__ import annotations

import logging
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glandseg import GlandsegError
from glandseg.data.discover import (
    SPLITS,
    Sample,
    build_samples,
    find_grade_csv,
    index_folder,
    read_grades,
)
from glandseg.data.geojson import is_geojson, read_geojson_label
from glandseg.data.io import IMAGE_EXTS, image_size, read_image, read_label

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"
GRADES = ("benign", "malignant")


@dataclass(frozen=True)
class Problem:
    """One finding: ``level`` is ``"error"`` or ``"warning"``; ``path`` the file concerned
    (``None`` for a finding about the folder)."""

    level: str
    path: Path | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        return f"{self.level.upper():7s} {where}{self.message}"


@dataclass
class SplitStats:
    """Counts of one split (``train``, ``testA``, ``testB`` or ``other``)."""

    split: str
    images: int = 0
    annotations: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) of readable images
    glands: list[int] = field(default_factory=list)  # per readable annotation
    grades: dict[str, int] = field(default_factory=dict)  # grade -> images
    patients: set[int] = field(default_factory=set)
    geojson: int = 0  # annotations that are QuPath GeoJSON files
    regions: int = 0  # Region* polygons in them
    ignores: int = 0  # Ignore* polygons in them

    def size_range(self) -> str:
        """``"WxH..WxH"`` from the smallest to the largest image (by area), or ``"-"``."""
        if not self.sizes:
            return "-"
        lo = min(self.sizes, key=lambda s: (s[0] * s[1], s))
        hi = max(self.sizes, key=lambda s: (s[0] * s[1], s))
        return f"{lo[1]}x{lo[0]}" if lo == hi else f"{lo[1]}x{lo[0]}..{hi[1]}x{hi[0]}"

    def gland_stats(self) -> tuple[int, float, int] | None:
        """``(min, median, max)`` glands per annotated image, or ``None``."""
        if not self.glands:
            return None
        return min(self.glands), float(statistics.median(self.glands)), max(self.glands)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        g = self.gland_stats()
        return {
            "images": self.images,
            "annotations": self.annotations,
            "min_size_hw": list(min(self.sizes)) if self.sizes else None,
            "max_size_hw": list(max(self.sizes)) if self.sizes else None,
            "glands_per_image": None if g is None else dict(zip(("min", "median", "max"), g, strict=True)),
            "grades": dict(self.grades),
            "patients": sorted(self.patients),
            "geojson_annotations": self.geojson,
            "regions": self.regions,
            "ignore_polygons": self.ignores,
        }


@dataclass
class CheckReport:
    """Result of :func:`check_folder`."""

    root: Path
    splits: dict[str, SplitStats]
    problems: list[Problem]
    grades_file: Path | None = None

    @property
    def errors(self) -> list[Problem]:
        """The problems that make the folder unusable as it is."""
        return [p for p in self.problems if p.level == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        """The problems worth a look."""
        return [p for p in self.problems if p.level == WARNING]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "grades_file": str(self.grades_file) if self.grades_file else None,
            "splits": {k: v.to_dict() for k, v in self.splits.items()},
            "problems": [
                {"level": p.level, "path": str(p.path) if p.path else None, "message": p.message}
                for p in self.problems
            ],
        }

    def __str__(self) -> str:
        head = ("split", "images", "annotated", "size (WxH)", "glands min/median/max",
                "benign", "malignant", "patients")
        rows = [head]
        total = SplitStats("total")
        for st in self.splits.values():
            g = st.gland_stats()
            rows.append((
                st.split, str(st.images), str(st.annotations), st.size_range(),
                "-" if g is None else f"{g[0]}/{g[1]:g}/{g[2]}",
                str(st.grades.get("benign", 0)), str(st.grades.get("malignant", 0)),
                str(len(st.patients)),
            ))
            total.images += st.images
            total.annotations += st.annotations
            total.sizes += st.sizes
            total.glands += st.glands
            for k, v in st.grades.items():
                total.grades[k] = total.grades.get(k, 0) + v
            total.patients |= st.patients
        if len(self.splits) > 1:
            g = total.gland_stats()
            rows.append((
                "total", str(total.images), str(total.annotations), total.size_range(),
                "-" if g is None else f"{g[0]}/{g[1]:g}/{g[2]}",
                str(total.grades.get("benign", 0)), str(total.grades.get("malignant", 0)),
                str(len(total.patients)),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [f"data check of {self.root}"]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
        lines.append(f"grades: {self.grades_file}" if self.grades_file else "grades: no Grade.csv")
        n_geo = sum(st.geojson for st in self.splits.values())
        if n_geo:
            n_reg = sum(st.regions for st in self.splits.values())
            n_ign = sum(st.ignores for st in self.splits.values())
            lines.append(f"QuPath GeoJSON annotations: {n_geo} (Region* polygons: {n_reg}, "
                         f"Ignore* polygons: {n_ign}; learned from inside regions only where "
                         "a file has some)")
        lines += [str(p) for p in self.problems]
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = "OK" if self.ok else "NOT USABLE as it is"
        lines.append(f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}: {verdict}")
        return "\n".join(lines)


@dataclass
class _Result:
    """What checking one sample found (computed in a worker thread)."""

    size: tuple[int, int] | None = None
    glands: int | None = None
    problems: list[Problem] = field(default_factory=list)
    regions: int | None = None  # Region* polygons of a GeoJSON annotation (None: not one)
    ignores: int = 0


def _check_sample(s: Sample, decode_images: bool, need_anno: bool) -> _Result:
    r = _Result()
    try:
        r.size = image_size(s.image)
        if decode_images:
            # The header can be fine while the pixel data is cut short.
            h, w = read_image(s.image).shape[:2]
            r.size = (h, w)
    except GlandsegError as exc:
        r.problems.append(Problem(ERROR, s.image, _strip_path(exc, s.image)))
        r.size = None
    if s.anno is None:
        if need_anno:
            if s.split == "other":  # e.g. a correction folder: only corrected images train
                r.problems.append(Problem(WARNING, s.image, f"no annotation ({s.name}_anno.<ext> "
                                          f"or {s.name}.geojson): left out of training"))
            else:
                r.problems.append(Problem(ERROR, s.image, f"no annotation ({s.name}_anno.<ext>)"))
        return r
    if is_geojson(s.anno):
        return _check_geojson(s, r)
    try:
        lab = read_label(s.anno)
    except GlandsegError as exc:
        r.problems.append(Problem(ERROR, s.anno, _strip_path(exc, s.anno)))
        return r
    if r.size is not None and lab.shape != r.size:
        r.problems.append(Problem(
            ERROR, s.anno,
            f"annotation is {lab.shape[1]}x{lab.shape[0]} but its image is "
            f"{r.size[1]}x{r.size[0]} (WxH)",
        ))
    ids = np.unique(lab)
    ids = ids[ids > 0]
    r.glands = int(ids.size)
    if ids.size == 0:
        r.problems.append(Problem(WARNING, s.anno, "empty annotation (no gland)"))
    elif ids.size == 1:
        from scipy import ndimage

        n_parts = ndimage.label(lab > 0)[1]
        if n_parts > 1:
            r.problems.append(Problem(
                WARNING, s.anno,
                f"one label value ({int(ids[0])}) over {n_parts} separate regions: one gland "
                "in pieces, or a binary mask instead of instance labels (one id per gland)?",
            ))
    return r


def _check_geojson(s: Sample, r: _Result) -> _Result:
    """A QuPath GeoJSON annotation: rasterised at the image's size; its warnings (overlaps,
    self-intersections, shapes outside the image) become warnings of the report."""
    if r.size is None:
        return r  # the image is unreadable: already an error
    try:
        ras = read_geojson_label(s.anno, r.size)
    except GlandsegError as exc:
        r.problems.append(Problem(ERROR, s.anno, _strip_path(exc, s.anno)))
        return r
    r.problems += [Problem(WARNING, s.anno, _strip_path(Exception(w), s.anno))
                   for w in ras.warnings]
    r.glands = len(np.unique(ras.labels)) - 1 if ras.labels.any() else 0
    r.regions, r.ignores = ras.n_regions, ras.n_ignores
    if r.glands == 0:
        r.problems.append(Problem(WARNING, s.anno, "no gland in the GeoJSON"))
    if ras.ignore is not None and ras.ignore.all():
        r.problems.append(Problem(WARNING, s.anno, "every pixel is ignored (Region* polygons "
                                  "outside the image, or Ignore* over all of it)"))
    return r


def _strip_path(exc: Exception, path: Path) -> str:
    """The message of ``exc`` without its leading ``"<path>: "`` (the report adds it)."""
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def check_folder(
    root: str | os.PathLike,
    decode_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check the GlaS-like folder ``root`` (any layout :func:`~glandseg.data.discover.discover`
    accepts) and return a :class:`CheckReport`.

    Image sizes come from file headers; ``decode_images`` also decodes every image to
    find truncated files (annotations are always decoded, to count glands). Files are
    checked in ``workers`` threads (default: up to 4). Raises :class:`GlandsegError` only
    when ``root`` is not a folder or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise GlandsegError(f"{root}: no such folder; pass the folder holding the images")
    problems: list[Problem] = []
    by_stem, annos = index_folder(root)
    if not by_stem and not annos:
        raise GlandsegError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTS)})")
    grades_file = find_grade_csv(root)
    grades: dict[str, tuple[str, int]] = {}
    if grades_file is not None:
        try:
            grades = read_grades(grades_file)
        except GlandsegError as exc:
            problems.append(Problem(ERROR, grades_file, _strip_path(exc, grades_file)))
    samples = build_samples(root, by_stem, annos, grades)
    if grades_file is None and any(s.split in SPLITS for s in samples):
        problems.append(Problem(
            WARNING, None,
            "no Grade.csv: grades and patient IDs unknown (patient-wise validation "
            "splits fall back to one image per patient)",
        ))
    for stem in sorted(set(annos) - set(by_stem)):
        problems.append(Problem(ERROR, annos[stem], "annotation without an image"))

    need_anno = bool(annos)  # a folder with no annotation at all is an images-only folder
    if not annos:
        problems.append(Problem(
            WARNING, None,
            "no annotations (<stem>_anno.<ext> or QuPath <stem>.geojson): usable for predict, "
            "not for train or evaluate",
        ))
    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, n_workers)) as pool:
        results = list(pool.map(lambda s: _check_sample(s, decode_images, need_anno), samples))

    stats: dict[str, SplitStats] = {}
    for s, r in zip(samples, results, strict=True):
        st = stats.setdefault(s.split, SplitStats(s.split))
        st.images += 1
        st.annotations += s.anno is not None
        if r.size is not None:
            st.sizes.append(r.size)
        if r.glands is not None:
            st.glands.append(r.glands)
        if r.regions is not None:
            st.geojson += 1
            st.regions += r.regions
            st.ignores += r.ignores
        problems += r.problems
        if grades_file is not None and grades and s.split in SPLITS:
            if s.grade is None:
                problems.append(Problem(WARNING, s.image, f"{s.name} is not in {grades_file.name}"))
            elif s.grade not in GRADES:
                problems.append(Problem(
                    WARNING, grades_file, f"{s.name}: grade {s.grade!r} is neither benign nor malignant",
                ))
        if s.grade is not None:
            st.grades[s.grade] = st.grades.get(s.grade, 0) + 1
        if s.patient is not None:
            st.patients.add(s.patient)
    order = {name: i for i, name in enumerate((*SPLITS, "other"))}
    stats = dict(sorted(stats.items(), key=lambda kv: order.get(kv[0], 99)))
    report = CheckReport(root, stats, problems, grades_file)
    log.debug("checked %d images: %d errors, %d warnings",
              len(samples), len(report.errors), len(report.warnings))
    return report

