"""Find GlaS images, their annotations and grades in a folder.

Layouts accepted (images in any of :data:`glandseg.data.io.IMAGE_EXTS`: ``.bmp``, ``.png``,
``.tif``/``.tiff``, ``.jpg``/``.jpeg``, ``.webp``, ``.jp2``; annotations lossless only:
a JPEG annotation is an error naming the file):

- the official flat folder: ``train_1.bmp`` + ``train_1_anno.bmp``, ``testA_1…``,
  ``testB_1…`` and ``Grade.csv``;
- the study's layout with ``train/`` and ``test/`` (or ``testA/``, ``testB/``) sub-folders;
- any folder of ``<stem>.<ext>`` images with optional ``<stem>_anno.<ext>`` annotations
  (split ``"other"``).

An annotation may also be a QuPath GeoJSON file beside its image, ``<stem>.geojson`` or
``<stem>_anno.geojson`` (:mod:`glandseg.data.geojson`); a folder may mix both kinds, but one
image annotated both ways is an error naming the files.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from glandseg import GlandsegError
from glandseg.data.geojson import GEOJSON_EXTS, is_geojson
from glandseg.data.io import IMAGE_EXTS, lossy_label_reason

log = logging.getLogger(__name__)

SPLITS = ("train", "testA", "testB")
_STEM_RE = re.compile(r"^(train|testA|testB)_(\d+)$")


@dataclass(frozen=True)
class Sample:
    """One image of a data set: paths only, nothing decoded.

    ``split`` is ``"train"``, ``"testA"``, ``"testB"`` or ``"other"``; ``grade`` is
    ``"benign"``/``"malignant"`` and ``patient`` the patient ID where ``Grade.csv`` has them.
    """

    name: str
    image: Path
    anno: Path | None
    split: str
    grade: str | None = None
    patient: int | None = None


def split_of(stem: str) -> str:
    """The GlaS part of an image stem: ``train``, ``testA``, ``testB`` or ``other``."""
    m = _STEM_RE.match(stem)
    return m.group(1) if m else "other"


def _natural(text: str) -> tuple:
    """Sort key that orders ``img2`` before ``img10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _sort_key(sample: Sample) -> tuple:
    rank = SPLITS.index(sample.split) if sample.split in SPLITS else len(SPLITS)
    return (rank, _natural(sample.name))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_grades(path: str | Path) -> dict[str, tuple[str, int]]:
    """Parse GlaS ``Grade.csv`` → ``{name: (grade, patient_id)}``.

    Copes with the original file's CR-only line endings, CRLF or LF, the spaces
    after commas (``testA_1,4, benign, adenomatous``), a byte-order mark, and a
    missing header line. Grades are lower-cased (``benign``/``malignant``).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise GlandsegError(f"{path}: cannot read Grade.csv ({exc})") from exc
    lines = [ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()]
    if not lines:
        raise GlandsegError(f"{path}: empty Grade.csv")
    out: dict[str, tuple[str, int]] = {}
    for i, line in enumerate(lines, start=1):
        cells = [c.strip().strip('"').strip() for c in line.split(",")]
        if i == 1 and (len(cells) < 2 or not _is_int(cells[1])):
            continue  # the header line ("name, patient ID, grade (GlaS), ...")
        if len(cells) < 3 or not cells[0]:
            raise GlandsegError(f"{path}:{i}: expected 'name, patient ID, grade', got {line!r}")
        if not _is_int(cells[1]):
            raise GlandsegError(f"{path}:{i}: patient ID {cells[1]!r} is not an integer")
        out[cells[0]] = (cells[2].lower(), int(cells[1]))
    return out


def _candidate_files(root: Path) -> list[Path]:
    """Image-like files of ``root`` and its direct sub-folders, hidden ones left out
    (``.ipynb_checkpoints/`` copies, ``._train_1.bmp`` macOS resource forks)."""
    out = []
    for p in [*root.iterdir(), *root.glob("*/*")]:
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in (*IMAGE_EXTS, *GEOJSON_EXTS) and p.is_file():
            out.append(p)
    return out


# Preference among copies of one stem: the official BMP, then PNG, then TIFF, lossy last.
_EXT_ORDER = {e: i for i, e in enumerate((".bmp", ".png", ".tif", ".tiff", ".jpg", ".jpeg",
                                          ".webp", ".jp2"))}
_FOLDER_SPLITS = {s.lower(): s for s in SPLITS}


def find_grade_csv(root: Path) -> Path | None:
    """``Grade.csv`` in ``root`` or one of its sub-folders, or ``None``."""
    for cand in [root / "Grade.csv", root / "grade.csv", *root.glob("*/Grade.csv")]:
        if cand.is_file():
            return cand
    return None


def index_folder(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``(images, annotations)`` of ``root``, both keyed by image stem.

    Raises :class:`GlandsegError` naming the file when an annotation is lossy (JPEG, ...)
    and no lossless copy of it sits beside it."""
    by_stem: dict[str, Path] = {}
    annos: dict[str, Path] = {}
    for p in sorted(_candidate_files(root)):
        stem = p.stem
        if is_geojson(p):  # <stem>.geojson or <stem>_anno.geojson (QuPath annotations)
            key, table = stem.removesuffix("_anno"), annos
        elif stem.endswith("_anno"):
            key, table = stem[: -len("_anno")], annos
        elif stem.endswith("_overlay"):
            continue
        else:
            key, table = stem, by_stem
        old = table.get(key)
        if old is not None and old.parent == p.parent and is_geojson(old) != is_geojson(p):
            raise GlandsegError(f"{p}: {key} is annotated twice ({old.name} and {p.name}); "
                                "keep one of them (move the other out of the folder)")
        if old is not None:
            if old.parent != p.parent:
                log.warning("%s: same name as %s; using the first", p, old)
                continue
            if _EXT_ORDER.get(p.suffix.lower(), 9) >= _EXT_ORDER.get(old.suffix.lower(), 9):
                continue
        table[key] = p
    for p in sorted(annos.values(), key=lambda q: _natural(str(q))):
        why = lossy_label_reason(p)
        if why:
            raise GlandsegError(f"{p}: annotation {why}; lossy compression changes label "
                                "values at every gland border: save it losslessly as PNG "
                                "or TIFF (the image itself may stay JPEG)")
    return by_stem, annos


def discover(root: str | Path, splits: tuple[str, ...] | None = None) -> list[Sample]:
    """List the samples of a GlaS-like folder (searched up to one sub-folder deep).

    Returns samples sorted by split then number. An image without annotation has
    ``anno=None``. The split comes from the name (``train_3``, ``testA_7``); other names
    get the split of their folder when it is called ``train``, ``testA`` or ``testB``, and
    ``"other"`` elsewhere. ``splits`` keeps only those parts. Raises
    :class:`GlandsegError` if the folder does not exist or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise GlandsegError(
            f"{root}: no such folder; download GlaS (Warwick-QU) and pass the folder holding "
            "train_1.bmp, testA_1.bmp, ... (or train/ and test/ sub-folders)"
        )
    by_stem, annos = index_folder(root)
    if not by_stem:
        raise GlandsegError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTS)})")
    grades_path = find_grade_csv(root)
    grades = read_grades(grades_path) if grades_path else {}
    for o in sorted(set(annos) - set(by_stem)):
        log.warning("%s: annotation without an image", annos[o])
    return build_samples(root, by_stem, annos, grades, splits)


def build_samples(
    root: Path,
    by_stem: dict[str, Path],
    annos: dict[str, Path],
    grades: dict[str, tuple[str, int]],
    splits: tuple[str, ...] | None = None,
) -> list[Sample]:
    """Samples from an index of images and annotations (as :func:`discover` builds them),
    sorted by split then number."""
    samples = []
    for stem, image in by_stem.items():
        split = split_of(stem)
        if split == "other" and image.parent != root:
            split = _FOLDER_SPLITS.get(image.parent.name.lower(), "other")
        if splits is not None and split not in splits:
            continue
        grade, patient = grades.get(stem, (None, None))
        samples.append(Sample(stem, image, annos.get(stem), split, grade, patient))
    samples.sort(key=_sort_key)
    return samples


def orphan_annotations(root: str | Path) -> list[Path]:
    """Annotation files of ``root`` that have no matching image (for ``data check``)."""
    by_stem, annos = index_folder(Path(root))
    return sorted(annos[k] for k in set(annos) - set(by_stem))
