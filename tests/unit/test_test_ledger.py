"""The ledger of test evaluations (results/test_ledger.csv) is well formed, names the
shipped weights, and is the README's "Every test-set evaluation" table."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from glandseg.train.export import LEDGER_FIELDS, ledger_markdown, read_ledger

ROOT = Path(__file__).resolve().parents[2]
LEDGER = ROOT / "results" / "test_ledger.csv"

pytestmark = pytest.mark.skipif(not LEDGER.is_file(), reason="needs a source checkout "
                                "(results/test_ledger.csv)")


def test_ledger_rows_are_complete() -> None:
    rows = read_ledger(LEDGER)
    assert len(rows) >= 15
    for r in rows:
        assert all(r[k].strip() for k in LEDGER_FIELDS), r
        for h in r["weights_sha256"].split(" / "):
            assert h == "not recorded" or re.fullmatch(r"[0-9a-f]{64}", h), h


@pytest.mark.parametrize("path", ["glandseg/weights/glas-unet.safetensors",
                                  "glandseg/weights/glas-maskrcnn.safetensors",
                                  "glandseg/grade/weights/glas-grade.json"])
def test_shipped_weights_have_a_test_evaluation_row(path: str) -> None:
    digest = hashlib.sha256((ROOT / path).read_bytes()).hexdigest()
    hashes = {h for r in read_ledger(LEDGER) for h in r["weights_sha256"].split(" / ")}
    assert digest in hashes, f"{path}: no row in {LEDGER.name}"


def test_readme_table_is_the_ledger() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.split("### Every test-set evaluation", 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")),
               len(lines))
    assert "\n".join(lines[start:end]) + "\n" == ledger_markdown(read_ledger(LEDGER))
