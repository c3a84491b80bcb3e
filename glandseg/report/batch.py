"""Segment many images and write the per-image outputs (``glandseg predict``).

Per image ``<stem>.png`` (16-bit instance labels, 0 = background), ``<stem>_overlay.png``
and ``<stem>.geojson``; one ``glands.csv`` over all images. An unreadable input is logged
and reported, the other images are still processed.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from glandseg import GlandsegError
from glandseg.data.io import IMAGE_EXTS, read_image
from glandseg.infer.predictor import Predictor

log = logging.getLogger(__name__)

GLAS_MPP = 0.62005


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, annotations and overlays excluded) or glob patterns →
    sorted unique image paths. Raises if an input matches nothing."""
    out: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                and not f.stem.endswith(("_anno", "_overlay")) and not f.name.startswith(".")
            )
            if not found:
                raise GlandsegError(f"{p}: no images in this folder ({', '.join(IMAGE_EXTS)})")
            out += found
        elif p.exists():
            out.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(spec))
            if not matches:
                raise GlandsegError(f"{spec}: no such file, folder or matching pattern")
            out += [m for m in matches if m.is_file()]
    seen: dict[Path, None] = {}
    for p in out:
        seen.setdefault(p.resolve(), None)
    return list(seen)


@dataclass
class PredictReport:
    n_ok: int = 0
    n_glands: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def predict_files(paths: list[Path], out_dir: str | Path, predictor: Predictor,
                  mpp: float | None = GLAS_MPP) -> PredictReport:
    """Segment ``paths`` into ``out_dir`` (outputs above). Stems must be unique."""
    from glandseg.report.outputs import write_glands_csv, write_outputs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = [p.stem for p in paths]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise GlandsegError(f"several inputs share the name(s) {', '.join(dup)}; outputs would "
                            "overwrite each other: predict them into separate --out folders")
    report = PredictReport()
    rows: list[dict] = []
    for path in tqdm(paths, desc="predict", unit="img", disable=None):
        try:
            image = read_image(path)
        except GlandsegError as exc:
            log.error("%s", exc)
            report.failed.append((str(path), str(exc)))
            continue
        labels = predictor.predict(image)
        rows += write_outputs(out_dir, path.stem, image, labels, mpp)
        report.n_ok += 1
        report.n_glands += int(labels.max())
    write_glands_csv(out_dir / "glands.csv", rows)
    return report
