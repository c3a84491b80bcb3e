"""Find GlaS images, their annotations and grades in a folder.

Layouts accepted (any of ``.bmp``, ``.png``, ``.tif``/``.tiff``):

- the official flat folder: ``train_1.bmp`` + ``train_1_anno.bmp``, ``testA_1…``,
  ``testB_1…`` and ``Grade.csv``;
- the study's layout with ``train/`` and ``test/`` (or ``testA/``, ``testB/``) sub-folders;
- any folder of ``<stem>.<ext>`` images with optional ``<stem>_anno.<ext>`` annotations
  (split ``"other"``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from glandseg import GlandsegError
from glandseg.data.io import IMAGE_EXTS

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


def _sort_key(stem: str) -> tuple:
    m = _STEM_RE.match(stem)
    if m:
        return (SPLITS.index(m.group(1)), int(m.group(2)), stem)
    return (len(SPLITS), 0, stem)


def read_grades(path: str | Path) -> dict[str, tuple[str, int]]:
    """Parse GlaS ``Grade.csv`` → ``{name: (grade, patient_id)}``.

    Copes with the original file's CR-only line endings, CRLF or LF, and the spaces
    after commas (``testA_1,4, benign, adenomatous``).
    """
    path = Path(path)
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    lines = [ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()]
    if not lines:
        raise GlandsegError(f"{path}: empty Grade.csv")
    out: dict[str, tuple[str, int]] = {}
    for i, line in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 3:
            raise GlandsegError(f"{path}:{i}: expected 'name, patient ID, grade', got {line!r}")
        try:
            patient = int(cells[1])
        except ValueError as exc:
            raise GlandsegError(f"{path}:{i}: patient ID {cells[1]!r} is not an integer") from exc
        out[cells[0]] = (cells[2].lower(), patient)
    return out


def _find_grade_csv(root: Path) -> Path | None:
    for cand in [root / "Grade.csv", root / "grade.csv", *root.glob("*/Grade.csv")]:
        if cand.is_file():
            return cand
    return None


def discover(root: str | Path, splits: tuple[str, ...] | None = None) -> list[Sample]:
    """List the samples of a GlaS-like folder (searched up to one sub-folder deep).

    Returns samples sorted by split then number. An image without annotation has
    ``anno=None``. ``splits`` keeps only those parts. Raises :class:`GlandsegError`
    if the folder does not exist or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise GlandsegError(
            f"{root}: no such folder; download GlaS (Warwick-QU) and pass the folder holding "
            "train_1.bmp, testA_1.bmp, ... (or train/ and test/ sub-folders)"
        )
    files = [p for p in [*root.iterdir(), *root.glob("*/*")] if p.is_file()]
    by_stem: dict[str, Path] = {}
    annos: dict[str, Path] = {}
    for p in files:
        if p.suffix.lower() not in IMAGE_EXTS or p.name.startswith("."):
            continue
        stem = p.stem
        if stem.endswith("_anno"):
            key, table = stem[: -len("_anno")], annos
        elif stem.endswith(("_overlay",)):
            continue
        else:
            key, table = stem, by_stem
        if key in table and table[key] != p:
            # Prefer the official BMP, then PNG, then TIFF, for a stable choice.
            order = {e: i for i, e in enumerate((".bmp", ".png", ".tif", ".tiff"))}
            if order.get(p.suffix.lower(), 9) >= order.get(table[key].suffix.lower(), 9):
                continue
        table[key] = p
    if not by_stem:
        raise GlandsegError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTS)})")
    grades_path = _find_grade_csv(root)
    grades = read_grades(grades_path) if grades_path else {}
    samples = []
    for stem in sorted(by_stem, key=_sort_key):
        split = split_of(stem)
        if splits is not None and split not in splits:
            continue
        grade, patient = grades.get(stem, (None, None))
        samples.append(Sample(stem, by_stem[stem], annos.get(stem), split, grade, patient))
    orphans = sorted(set(annos) - set(by_stem))
    for o in orphans:
        log.warning("%s: annotation without an image", annos[o])
    return samples


def orphan_annotations(root: str | Path) -> list[Path]:
    """Annotation files of ``root`` that have no matching image (for ``data check``)."""
    root = Path(root)
    files = [p for p in [*root.iterdir(), *root.glob("*/*")] if p.is_file()]
    stems = {p.stem for p in files if p.suffix.lower() in IMAGE_EXTS}
    return sorted(
        p for p in files
        if p.suffix.lower() in IMAGE_EXTS and p.stem.endswith("_anno") and p.stem[:-5] not in stems
    )
