"""The output folder of ``glandseg predict``: many images, no data lost (the pipeline that
segments them is :func:`glandseg.engine.predict.predict_files`; this module writes files).

Per image ``<stem>.png`` (16-bit instance labels, 0 = background), ``<stem>_overlay.png``
and ``<stem>.geojson``; one ``glands.csv`` with the rows of *every* image whose outputs are
in the folder (not only this run's). An unreadable input is logged and reported, the other
images are still processed. A whole slide or large image (:func:`glandseg.data.slide.is_large`:
a slide format, a pyramidal TIFF or more than 4096² px) goes through
:func:`glandseg.engine.slide.predict_slide_file` (by region, resumable window cache in
``<out>/.glandseg/slides/<stem>/``) and gets ``<stem>.tif`` (a tiled pyramidal label TIFF)
instead of the PNG (:mod:`glandseg.report.slide`).

What glandseg wrote is recorded in the hidden folder ``<out>/.glandseg/``:

- ``images/<stem>.json``: one record per image: the output file names with their SHA-256
  (and size and modification time, so unchanged files need not be hashed again) and the
  image's ``glands.csv`` rows (as text). It is written ``"pending"`` (names only) before
  the outputs and ``"done"`` (checksums, rows) after them.
- ``glands.json``: the SHA-256 of the ``glands.csv`` glandseg last wrote; likewise
  ``images.json`` for ``images.csv`` (one row per image: gland count, grade, probability)
  and ``index.json`` for ``index.html`` (a gallery of the overlays,
  :func:`glandseg.report.html.index_html`), joined from the records like ``glands.csv``.
- ``lock``: an ``fcntl`` lock, held shared while one image's outputs and record are written
  (with the exclusive lock of the image's stripe, ``lock.0`` ... ``lock.15``, so worker
  processes write different images at once) and exclusively while ``glands.csv`` is joined
  or stale temporary files are removed, so concurrent runs into one folder merge.

An existing file counts as ours only if a record names it and, for a done record, its
checksum still matches. Anything else (an input image, a file glandseg did not write or
one edited since, a folder) is never overwritten: the run stops before writing anything.
Outputs of ours that already exist are refused too, unless ``mode`` is ``"overwrite"``
(replace them) or ``"skip"`` (keep images whose outputs are all present and complete).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import stat
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glandseg import GlandsegError, __version__
from glandseg.data.io import (
    IMAGE_EXTS,
    csv_quoting,
    csv_safe,
    file_problem,
    temp_target,
    write_text,
)
from glandseg.data.slide import SLIDE_EXTS, is_large
from glandseg.models.fingerprint import sha256_file
from glandseg.report.grading import GRADES_CSV
from glandseg.report.slide import SLIDE_SUFFIXES, write_slide_outputs

try:  # POSIX; elsewhere concurrent runs into one folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Outputs of one image, as suffixes of its stem.
OUTPUT_SUFFIXES: tuple[str, ...] = (".png", "_overlay.png", ".geojson")
CSV_NAME = "glands.csv"
IMAGES_CSV = "images.csv"
INDEX_HTML = "index.html"
#: Files joined from the records of every image in the folder (each guarded by a checksum
#: in ``.glandseg/<name stem>.json``).
JOINED: tuple[str, ...] = (CSV_NAME, IMAGES_CSV, INDEX_HTML)
STATE_DIR = ".glandseg"
MODES = ("refuse", "overwrite", "skip")
_NUM_RE = re.compile(r"(\d+)")
_MAX_LISTED = 5


def output_names(stem: str, slide: bool = False) -> list[str]:
    """File names of one image's outputs: ``<stem>.png``, ``<stem>_overlay.png``,
    ``<stem>.geojson`` (``slide``: ``<stem>.tif`` instead of the PNG)."""
    return [f"{stem}{s}" for s in (SLIDE_SUFFIXES if slide else OUTPUT_SUFFIXES)]


def _natural_key(stem: str) -> list:
    return [int(t) if t.isdigit() else t for t in _NUM_RE.split(stem)]


def _records_dir(out: Path) -> Path:
    return out / STATE_DIR / "images"


def _record_path(out: Path, stem: str) -> Path:
    return _records_dir(out) / f"{stem}.json"


def _file_id(path: Path) -> dict[str, Any]:
    """What a record keeps of a file it claims: SHA-256, size, modification time (ns)."""
    st = path.stat()
    return {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _unchanged(path: Path, want: Any) -> bool:
    """Whether ``path`` is still the file a record describes (see :func:`_file_id`); the
    hash is skipped when size and modification time are unchanged."""
    if not isinstance(want, dict):
        return False
    st = path.stat()
    if st.st_size != want.get("size"):
        return False
    return st.st_mtime_ns == want.get("mtime_ns") or sha256_file(path) == want.get("sha256")


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; ``None`` if missing or unreadable (logged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable glandseg record (%s); ignored", path, exc)
        return None
    return data if isinstance(data, dict) else None


def read_record(out: str | os.PathLike, stem: str) -> dict | None:
    """The record of image ``stem`` in the output folder ``out`` (see the module doc)."""
    rec = _read_json(_record_path(Path(out), stem))
    if rec is None or not isinstance(rec.get("files"), dict):
        return None
    return rec


def our_files(folder: str | os.PathLike) -> set[str]:
    """Names of the files glandseg's records in ``folder`` claim (its own outputs)."""
    folder = Path(folder)
    names = set(JOINED) if (folder / STATE_DIR).is_dir() else set()
    rdir = _records_dir(folder)
    if rdir.is_dir():
        for p in rdir.glob("*.json"):
            rec = _read_json(p)
            if rec and isinstance(rec.get("files"), dict):
                names.update(rec["files"])
    return names


@contextlib.contextmanager
def folder_lock(out: str | os.PathLike, shared: bool = False,
                name: str = "lock") -> Iterator[None]:
    """Hold the output folder's lock (``<out>/.glandseg/lock``; ``fcntl.flock``):
    exclusive, or ``shared`` (any number of holders, no exclusive one). ``name``: another
    lock file in the same folder (:func:`image_lock`)."""
    state = Path(out) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    with open(state / name, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


#: Images are locked in this many stripes (``<out>/.glandseg/lock.K``, K from the name):
#: two images of one stripe wait for each other, which is rare and harmless.
IMAGE_LOCK_STRIPES = 16


@contextlib.contextmanager
def image_lock(out: str | os.PathLike, stem: str) -> Iterator[None]:
    """Hold the lock to write image ``stem``'s outputs and record: the folder's lock shared
    (so worker processes write different images at once, while cleaning and joining, which
    take it exclusively, wait) and an exclusive lock of the image's stripe (so two runs
    never write one image at once)."""
    stripe = zlib.crc32(stem.encode("utf-8")) % IMAGE_LOCK_STRIPES
    with folder_lock(out, shared=True), folder_lock(out, name=f"lock.{stripe}"):
        yield


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders or glob patterns → sorted unique image paths (absolute, symlinks kept).

    A folder gives its images, leaving out annotations (``*_anno``), overlays
    (``*_overlay``), hidden files and the outputs glandseg wrote there (:func:`our_files`).
    Raises :class:`GlandsegError` if an input matches nothing, or if a named (or matched)
    file is not a readable regular file: a broken symbolic link, a link loop, a FIFO or
    another special file (all of them named; a FIFO would block the run forever).
    """
    out: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            ours = our_files(p)
            found = sorted(
                f for f in p.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS + SLIDE_EXTS
                and f.name not in ours
                and not f.stem.endswith(("_anno", "_overlay")) and not f.name.startswith(".")
            )
            if not found:
                raise GlandsegError(f"{p}: no images in this folder ({', '.join(IMAGE_EXTS)})")
            out += found
        elif p.exists() or p.is_symlink():
            out.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(spec))
            if not matches:
                raise GlandsegError(f"{spec}: no such file, folder or matching pattern")
            out += [m for m in matches if not m.is_dir()]
    bad = [f"{p}: {why}" for p in out if (why := file_problem(p))]
    if bad:
        raise GlandsegError("input(s) that are not image files: " + _listed(bad))
    seen: dict[Path, Path] = {}
    for p in out:
        seen.setdefault(p.resolve(), Path(os.path.abspath(p)))
    return list(seen.values())


def _image_state(out: Path, stem: str, slide: bool = False) -> tuple[str, list[str]]:
    """``("absent" | "partial" | "complete", problems)`` of one image's outputs in ``out``.

    A problem is an output path that exists but is a folder, or a file that no record
    claims or whose checksum differs from the record's: it must never be overwritten.
    """
    rec = read_record(out, stem)
    files = rec["files"] if rec else {}
    done = bool(rec) and rec.get("state") == "done"
    problems, present = [], 0
    names = output_names(stem, slide)
    for name in names:
        path = out / name
        if path.is_dir():
            problems.append(f"{path} is a folder")
            continue
        if not path.exists():
            continue
        if name not in files:
            problems.append(f"{path} exists and was not written by glandseg")
            continue
        want = files[name]
        if want is not None and not _unchanged(path, want):
            problems.append(f"{path} was changed after glandseg wrote it")
            continue
        present += 1
    if present == 0:
        return "absent", problems
    if done and present == len(names):
        return "complete", problems
    return "partial", problems


def csv_problem(out: Path, name: str = CSV_NAME) -> str | None:
    """Why ``out/<name>`` (``glands.csv`` or another of :data:`JOINED`) must not be
    overwritten, or ``None`` if it is ours (or absent)."""
    path = out / name
    if path.is_dir():
        return f"{path} is a folder"
    if not path.exists():
        return None
    rec = _read_json(out / STATE_DIR / f"{Path(name).stem}.json") or {}
    if sha256_file(path) not in (rec.get("sha256") or []):
        return (f"{path} exists and was not written by glandseg (or was edited since)")
    return None


def prepare_out(out_dir: str | os.PathLike) -> Path:
    """``--out`` as an absolute path; raises if it (or a parent) is a file. Creates nothing."""
    out = Path(os.path.abspath(out_dir))
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "--out" if p == out else f"a parent of --out {out}"
                raise GlandsegError(f"{p} ({what}) is an existing file, not a folder; "
                                    "give --out a new or existing folder")
            break
    state = out / STATE_DIR
    if state.exists() and not state.is_dir():
        raise GlandsegError(f"{state} is a file; glandseg keeps its records there: "
                            "move it away or choose another --out")
    return out


def check_writable(out: Path) -> None:
    """Raise :class:`GlandsegError` (one line, naming the folder) unless files can be created
    in ``out`` (and its ``.glandseg`` records folders), or, when ``out`` does not exist yet,
    in its nearest existing parent. Cheap (``os.access``): run it before loading a model.
    As root, permissions always pass (a read-only file system still fails)."""
    base = next((p for p in (out, *out.parents) if p.exists()), None)
    if base is None:
        return
    folders = [base]
    if base == out:
        folders += [d for d in (out / STATE_DIR, _records_dir(out)) if d.is_dir()]
    for d in folders:
        if not os.access(d, os.W_OK | os.X_OK):
            what = ("--out" if d == out else "glandseg's records in --out" if out in d.parents
                    else f"the nearest existing parent of --out {out}")
            raise GlandsegError(f"{d} ({what}) is not writable (read-only or no permission): "
                                "fix its permissions or choose another --out")


def clean_stale_temps(out: Path, started: float) -> list[Path]:
    """Delete temporary files that a killed glandseg run left in ``out`` and return them.

    Only regular files named as :func:`glandseg.data.io.atomic_path` names them, for a file
    glandseg writes there (an output or joined file that its records claim, ``grades.csv``,
    or a record in ``.glandseg/``), and last modified before ``started`` (this run's start,
    ``time.time()``). The caller holds the folder lock, under which every glandseg run
    writes those files, so none of them is being written."""
    def top(name: str) -> bool:
        return name in ours or name == GRADES_CSV

    def record(name: str) -> bool:
        return name.endswith(".json")

    ours = our_files(out)
    removed = []
    for folder, wanted in ((out, top), (out / STATE_DIR, record), (_records_dir(out), record)):
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            target = temp_target(f.name)
            if target is None or not wanted(target):
                continue
            st = _stat_nofollow(f)
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_mtime >= started:
                continue
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


def _stat_nofollow(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:
        return None


def count_glands(labels: np.ndarray) -> int:
    """Glands in a label image ``(H, W)`` (0 = background): the ids present, which is what
    ``glands.csv`` gets a row for (ids may have gaps, so not ``labels.max()``)."""
    labels = np.asarray(labels)
    if not labels.size:
        return 0
    return int(np.count_nonzero(np.bincount(labels.ravel().astype(np.int64))[1:]))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _listed(items: Sequence[str]) -> str:
    more = len(items) - _MAX_LISTED
    return "; ".join(items[:_MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")


def plan_outputs(paths: Sequence[Path], out_dir: str | os.PathLike,
                 mode: str = "refuse") -> tuple[list[Path], list[Path]]:
    """Check a run before anything is written; return ``(to_do, skipped)`` input paths.

    Raises :class:`GlandsegError` (nothing written) when two inputs share a stem, an output
    path would replace an input, an output path is a folder or a file glandseg did not
    write, or (``mode="refuse"``) outputs of ours already exist. ``mode="skip"`` skips the
    images whose outputs are all present and complete; ``"overwrite"`` replaces ours.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = prepare_out(out_dir)
    check_writable(out)
    stems = [p.stem for p in paths]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise GlandsegError(f"several inputs share the name(s) {', '.join(dup)}; outputs would "
                            "overwrite each other: predict them into separate --out folders")
    given = {Path(os.path.abspath(p)): p for p in paths}
    real = {p.resolve(): p for p in paths}
    inodes = {(st.st_dev, st.st_ino): p for p in paths if (st := _stat(p))}
    slide = {p: is_large(p) for p in paths}
    hits = []
    for p in paths:
        for name in [*output_names(p.stem, slide[p]), *JOINED]:
            target = out / name
            src = given.get(target) or real.get(target.resolve())
            if src is None and (st := _stat(target)):  # a hard link to an input
                src = inodes.get((st.st_dev, st.st_ino))
            if src is not None:
                hits.append(f"{target} is the input {src}")
    if hits:
        hits = list(dict.fromkeys(hits))
        raise GlandsegError("an output would overwrite an input (" + _listed(hits)
                            + "): choose an --out folder that holds no input images")
    problems: list[str] = []
    existing: dict[Path, str] = {}
    if out.is_dir():
        problems += [why for name in JOINED if (why := csv_problem(out, name))]
        for p in paths:
            state, why = _image_state(out, p.stem, slide[p])
            problems += why
            if state != "absent":
                existing[p] = state
    if problems:
        raise GlandsegError("refusing to overwrite files glandseg did not write ("
                            + _listed(problems) + "): move them away or choose another --out")
    if existing and mode == "refuse":
        names = [f"{out / output_names(p.stem, slide[p])[0]}" for p in existing]
        raise GlandsegError(f"outputs of {len(existing)} image(s) already exist in {out} ("
                            + _listed(names) + "): pass --overwrite to replace them or "
                            "--skip-existing to keep them and segment only the others")
    skipped = [p for p, s in existing.items() if mode == "skip" and s == "complete"]
    todo = [p for p in paths if p not in set(skipped)]
    return todo, skipped


def _write_record(out: Path, stem: str, rec: dict[str, Any]) -> None:
    write_text(_record_path(out, stem), json.dumps(rec, indent=1, ensure_ascii=False) + "\n")


def commit_image(out_dir: str | os.PathLike, stem: str, source: str | os.PathLike, image,
                 labels, mpp: float | None, mode: str = "refuse", slide=None,
                 grade=None, uncertainty: float | None = None) -> bool:
    """Write one image's outputs and its record under the image's lock (:func:`image_lock`).

    ``image``: ``uint8 (H, W, 3)``; ``labels``: ``(H, W)`` integers, 0 = background; or
    ``slide``: a :class:`glandseg.infer.slide.SlideLabels` (``image``/``labels`` unused),
    written by :func:`glandseg.report.slide.write_slide_outputs`. ``grade``: the image's
    :class:`glandseg.grade.engine.Grade` (GeoJSON properties, the record, ``images.csv``).
    ``uncertainty``: the image's :func:`glandseg.metrics.uncertainty.uncertainty` (0-1; the
    record, ``images.csv``, the order of ``index.html``), ``None`` when not computed.
    Re-checks the image's outputs under the lock (another run may have written them since
    :func:`plan_outputs`): raises :class:`GlandsegError` for files glandseg did not write,
    or for outputs of ours that appeared meanwhile with ``mode="refuse"``. Returns
    ``False`` (nothing written) with ``mode="skip"`` when complete outputs appeared.
    An ``OSError`` while writing (a full disk) is raised after the image's outputs and
    record are removed, so the image is absent, never half-written.
    """
    from glandseg.report.outputs import format_rows, write_outputs

    out = Path(out_dir)
    with image_lock(out, stem):
        state, problems = _image_state(out, stem, slide is not None)
        if problems:
            raise GlandsegError("refusing to overwrite files glandseg did not write ("
                                + _listed(problems) + ")")
        if state != "absent":
            if mode == "skip" and state == "complete":
                return False
            if mode == "refuse":
                raise GlandsegError(f"{stem}: outputs appeared in {out} during this run "
                                    "(another run?); pass --overwrite or --skip-existing")
        names = output_names(stem, slide is not None)
        rec: dict[str, Any] = {"format": "glandseg-output-record", "version": 1,
                               "image": stem, "source": str(source), "state": "pending",
                               "files": {n: None for n in names}, "rows": [],
                               "glandseg": __version__}
        _write_record(out, stem, rec)
        try:
            if slide is not None:
                rows = write_slide_outputs(out, stem, slide, mpp)
            else:
                props = None if grade is None else {
                    "grade": grade.grade, "grade_probability": round(grade.probability, 4)}
                rows = write_outputs(out, stem, image, labels, mpp, properties=props)
                if props:
                    rec["grade"] = props
                if uncertainty is not None:
                    rec["uncertainty"] = round(float(uncertainty), 4)
            rec.update(state="done", files={n: _file_id(out / n) for n in names},
                       rows=format_rows(rows),
                       written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            _write_record(out, stem, rec)
        except OSError:
            for path in [*(out / n for n in names), _record_path(out, stem)]:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise
    return True


def join_glands_csv(out_dir: str | os.PathLike) -> int:
    """Rewrite ``<out>/glands.csv`` from the records of every image whose outputs are all in
    the folder (ordered by image name), under the folder lock. Returns the number of rows.

    ``images.csv`` and ``index.html`` are rewritten from the same records.
    Raises :class:`GlandsegError` if one of them is not ours. Each checksum is recorded
    before (with the old one) and after the atomic write, so a kill at any instant leaves
    files that the next run still recognises.
    """
    from glandseg.report.html import index_html
    from glandseg.report.outputs import glands_csv

    out = Path(out_dir)
    with folder_lock(out):
        problems = [why for name in JOINED if (why := csv_problem(out, name))]
        if problems:
            raise GlandsegError(f"{_listed(problems)}; not rewritten: move it away and run again")
        recs = []
        rdir = _records_dir(out)
        for p in rdir.glob("*.json") if rdir.is_dir() else ():
            rec = _read_json(p)
            if (rec and rec.get("state") == "done" and isinstance(rec.get("files"), dict)
                    and all((out / n).is_file() for n in rec["files"])):
                recs.append(rec)
        recs.sort(key=lambda r: _natural_key(str(r.get("image", ""))))
        rows = [row for r in recs for row in r.get("rows", [])]
        write_joined(out, CSV_NAME, glands_csv(rows))
        images = [image_row(r) for r in recs]
        write_joined(out, IMAGES_CSV, images_csv(images))
        write_joined(out, INDEX_HTML, index_html(images))
    return len(rows)


def write_joined(out: Path, name: str, text: str) -> None:
    """Write one of :data:`JOINED`, its checksum recorded before and after (see
    :func:`join_glands_csv`); the caller holds the folder lock."""
    new = hashlib.sha256(text.encode("utf-8")).hexdigest()
    meta = out / STATE_DIR / f"{Path(name).stem}.json"
    old = out / name
    before = [sha256_file(old)] if old.is_file() else []
    write_text(meta, json.dumps({"sha256": [*before, new]}) + "\n")
    write_text(out / name, text)
    write_text(meta, json.dumps({"sha256": [new]}) + "\n")


def image_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One image of a record: ``image``, ``n_glands``, ``grade``, ``grade_probability``
    (empty without a grade), ``uncertainty`` (empty when not computed: instance models,
    whole slides, older records) and ``files`` (its output names)."""
    g = rec.get("grade") if isinstance(rec.get("grade"), dict) else {}
    unc = rec.get("uncertainty")
    return {"image": str(rec.get("image", "")), "n_glands": len(rec.get("rows", [])),
            "grade": g.get("grade", ""), "grade_probability": g.get("grade_probability", ""),
            "uncertainty": unc if isinstance(unc, int | float) else "",
            "files": list(rec.get("files", {}))}


def images_csv(images: Sequence[dict[str, Any]]) -> str:
    """``images.csv``: ``image, n_glands, grade, grade_probability, uncertainty`` per image
    (uncertainty: :func:`glandseg.metrics.uncertainty.uncertainty`, empty when not computed;
    an image name that a spreadsheet would read as a formula is prefixed with ``'``:
    :func:`glandseg.data.io.csv_safe`)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv_quoting(im["image"] for im in images))
    w.writerow(["image", "n_glands", "grade", "grade_probability", "uncertainty"])
    for im in images:
        w.writerow([csv_safe(im["image"]), im["n_glands"], im["grade"], im["grade_probability"],
                    im.get("uncertainty", "")])
    return buf.getvalue()


def failure_line(path: str, why: str) -> str:
    """``failed: PATH: WHY`` for a failed input, naming the path once (most errors start
    with it already)."""
    return f"failed: {why}" if why.startswith(f"{path}:") else f"failed: {path}: {why}"
