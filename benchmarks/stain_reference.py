"""Fit the bundled stain reference (``glandseg/data/stain_reference.json``) on GlaS.

The reference is fitted on the training images of the *training* patients of the
validation split that the bundled models use (``patient_split(train images, 0.2, seed 0)``):
the images those models learnt from; the validation patients and Test A/B are left out.

    .venv/bin/python benchmarks/stain_reference.py [--data ../shared/glas] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glandseg.data.dataset import patient_split  # noqa: E402
from glandseg.data.discover import discover  # noqa: E402
from glandseg.data.io import read_image, write_text  # noqa: E402
from glandseg.data.stain import REFERENCE_FILE, fit_reference  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "glas"))
    ap.add_argument("--out", default=str(ROOT / "glandseg" / "data" / REFERENCE_FILE))
    args = ap.parse_args()
    train, val = patient_split(discover(args.data, splits=("train",)), 0.2, 0)
    patients = sorted({s.patient for s in val if s.patient is not None})
    source = (f"GlaS training images of the training patients ({len(train)} images; "
              f"validation patients {', '.join(map(str, patients))} and Test A/B left out)")
    ref = fit_reference((read_image(s.image) for s in train), source=source)
    write_text(args.out, json.dumps(ref, indent=1) + "\n")
    print(json.dumps(ref, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
