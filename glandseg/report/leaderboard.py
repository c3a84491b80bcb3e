"""Rank GlaS results against the published methods, the way the 2015 challenge did.

The published table (``published.csv``, packaged with :mod:`glandseg.report`) holds, per
method, the Test A / Test B values of the three official GlaS metrics: F1 and object Dice
(higher is better) and object Hausdorff in pixels (lower is better). Each method gets one
rank per metric and per part, by standard competition ranking ("1224": tied values share
the best rank and the next rank skips); the sum of the six ranks orders the methods, and
tied sums share a place.

Our results come from the ``metrics.json`` that ``glandseg score`` writes::

    {"testA": {"n_images": 60,
               "pooled": {"f1": .., "object_dice": .., "object_hausdorff": .., "tp": .., ...},
               "per_image": {...}},
     "testB": {...}}

The official challenge figures are the *pooled* ones, so those are ranked. Unknown keys
are ignored.

Only *official* results are ranked: the 2015 challenge entries (kind ``challenge_entry``)
and our own results. Every other row is listed below the ranked rows, unranked, marked,
with the reason in a footnote and in the row's ``note``:

- ``*`` the study's own two rows (kind ``seed_claim``): scored with a non-official metric
  (pixel-weighted per-object F1 on binarised masks), not comparable with the table;
- ``^`` methods published after the challenge (kind ``later_method``): not challenge
  entries (tested after the test sets were public); shown for reference;
- ``~`` a *partial* result of ours (a part marked ``"partial": true`` by ``glandseg
  evaluate --limit``, or with fewer than the official 60 Test A / 20 Test B images).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glandseg import GlandsegError

log = logging.getLogger(__name__)

#: ``(column, metric key in metrics.json, part key in metrics.json, higher is better)``,
#: in the order of the challenge table: F1 A, F1 B, object Dice A, B, Hausdorff A, B.
COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("f1_a", "f1", "testA", True),
    ("f1_b", "f1", "testB", True),
    ("object_dice_a", "object_dice", "testA", True),
    ("object_dice_b", "object_dice", "testB", True),
    ("object_hausdorff_a", "object_hausdorff", "testA", False),
    ("object_hausdorff_b", "object_hausdorff", "testB", False),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c[0] for c in COLUMNS)
HEADERS: dict[str, str] = {
    "f1_a": "F1 A",
    "f1_b": "F1 B",
    "object_dice_a": "ObjDice A",
    "object_dice_b": "ObjDice B",
    "object_hausdorff_a": "ObjHausdorff A",
    "object_hausdorff_b": "ObjHausdorff B",
}

#: Kinds of published rows ranked with our results: the 2015 challenge entries only.
RANKED_KINDS: tuple[str, ...] = ("challenge_entry",)
#: Every kind in the packaged table; by default all are listed (the non-official ones
#: unranked, below the ranked rows).
ALL_KINDS: tuple[str, ...] = ("challenge_entry", "seed_claim", "later_method")
DEFAULT_KINDS: tuple[str, ...] = ALL_KINDS
#: Kind given to the results ranked with :func:`rank` / :func:`rank_many`.
OURS = "ours"
#: Kind of our results on fewer than all official test images: listed, never ranked.
PARTIAL = "ours_partial"
#: Images in the official GlaS test parts.
OFFICIAL_IMAGES: dict[str, int] = {"testA": 60, "testB": 20}

MARKERS: dict[str, str] = {"seed_claim": "*", "later_method": "^", OURS: "+", PARTIAL: "~"}
#: Why each kind is (or is not) ranked; printed as footnotes under the table.
FOOTNOTES: dict[str, str] = {
    "seed_claim": (
        "the study's own row, scored with a non-official metric (pixel-weighted per-object "
        "F1 on binarised masks): not comparable, not ranked"
    ),
    "later_method": (
        "published after the 2015 challenge, not a challenge entry (the test sets were "
        "public by then): shown for reference, not ranked"
    ),
    OURS: "this work: official GlaS metrics (pooled over each test part), ranked with the "
    "2015 challenge entries",
    PARTIAL: "this work on PARTIAL test parts (not every official image scored): shown for "
    "reference, not ranked",
}
#: Order of the unranked groups below the ranked rows.
UNRANKED_ORDER: tuple[str, ...] = (PARTIAL, "seed_claim", "later_method")

#: Values are compared at this many decimals, the precision of the published table, so
#: that two values printed alike get the same rank. ``None`` compares full precision.
DEFAULT_DECIMALS: int | None = 3


@dataclass(frozen=True)
class Method:
    """One published (or our) result: the six official values and where they come from."""

    method: str
    kind: str
    values: dict[str, float]
    year: int | None = None
    source: str = ""
    notes: str = ""


@dataclass
class Row:
    """One row of the leaderboard.

    ``ranks`` maps each column of :data:`COLUMN_NAMES` to its competition rank,
    ``rank_sum`` is their sum and ``place`` the competition rank of the sum (1 = best).
    An unranked row (the study's rows, later methods, our partial results: see
    :func:`is_ranked`) has no ranks, ``rank_sum`` and ``place`` ``None``, and ``note``
    saying why (for a partial result: how many images each part had).
    """

    method: str
    kind: str
    values: dict[str, float]
    ranks: dict[str, int] = field(default_factory=dict)
    rank_sum: int | None = 0
    place: int | None = 0
    year: int | None = None
    source: str = ""
    note: str = ""

    @property
    def marker(self) -> str:
        """:data:`MARKERS` of the row's kind: ``"*"`` the study's non-official rows, ``"^"``
        later methods, ``"+"`` ours, ``"~"`` our partial ones, ``""`` challenge entries."""
        return MARKERS.get(self.kind, "")

    @property
    def ranked(self) -> bool:
        """Whether the row was ranked (``place`` is set)."""
        return self.place is not None

    def as_dict(self) -> dict[str, Any]:
        """Flat dict: place, method, kind, year, each value and its rank, rank_sum, source,
        note (``None`` ranks, rank_sum and place for an unranked row)."""
        d: dict[str, Any] = {"place": self.place, "method": self.method, "kind": self.kind}
        d["year"] = self.year
        for col in COLUMN_NAMES:
            d[col] = self.values[col]
            d[f"{col}_rank"] = self.ranks.get(col)
        d["rank_sum"] = self.rank_sum
        d["source"] = self.source
        d["note"] = self.note
        return d


def load_published(path: str | os.PathLike | None = None) -> list[Method]:
    """Read the published table (the packaged ``published.csv`` unless ``path`` is given)."""
    if path is None:
        text = resources.files("glandseg.report").joinpath("published.csv").read_text("utf-8")
        where = "glandseg/report/published.csv"
    else:
        p = Path(path)
        if not p.is_file():
            raise GlandsegError(f"{p}: file not found; check the path")
        text = p.read_text(encoding="utf-8")
        where = str(p)
    reader = csv.DictReader(io.StringIO(text))
    missing = {"method", "kind", *COLUMN_NAMES} - set(reader.fieldnames or ())
    if missing:
        raise GlandsegError(f"{where}: missing columns {sorted(missing)}")
    methods = []
    for i, rec in enumerate(reader, start=2):
        try:
            values = {col: float(rec[col]) for col in COLUMN_NAMES}
            year = int(rec["year"]) if rec.get("year") else None
        except (TypeError, ValueError) as exc:
            raise GlandsegError(f"{where}, line {i}: bad number ({exc})") from exc
        methods.append(
            Method(
                method=rec["method"].strip(),
                kind=rec["kind"].strip(),
                values=values,
                year=year,
                source=(rec.get("source") or "").strip(),
                notes=(rec.get("notes") or "").strip(),
            )
        )
    return methods


def metrics_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The six official pooled values of a ``metrics.json`` dict, keyed by :data:`COLUMN_NAMES`.

    A ``null`` or NaN value is kept as NaN (it ranks last). Raises :class:`GlandsegError`
    (without a file name; the caller adds it) if a part, ``pooled`` or a metric is missing
    or not a number.
    """
    if not isinstance(metrics, Mapping):
        raise GlandsegError(
            f"expected a JSON object with testA and testB, got {type(metrics).__name__}"
        )
    values: dict[str, float] = {}
    for col, key, part, _ in COLUMNS:
        section = metrics.get(part)
        if not isinstance(section, Mapping):
            raise GlandsegError(
                f"no {part!r} section; expected the metrics.json that 'glandseg score' writes "
                "(with testA and testB)"
            )
        pooled = section.get("pooled")
        if not isinstance(pooled, Mapping):
            raise GlandsegError(f"{part!r} has no 'pooled' section")
        if key not in pooled:
            raise GlandsegError(f"{part}.pooled has no {key!r}")
        v = pooled[key]
        if v is None:
            v = math.nan
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise GlandsegError(f"{part}.pooled.{key} is not a number: {v!r}")
        values[col] = float(v)
        if not math.isfinite(values[col]):
            log.warning("%s.pooled.%s is %s; it ranks last", part, key, v)
    return values


def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``metrics.json``; raises :class:`GlandsegError` naming the file if it is
    missing, not JSON, or lacks the pooled testA / testB metrics."""
    p = Path(path)
    if not p.is_file():
        raise GlandsegError(
            f"{p}: file not found; pass the metrics.json that 'glandseg score' wrote"
        )
    try:
        metrics = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlandsegError(f"{p}: not a valid JSON file ({exc})") from exc
    try:
        metrics_values(metrics)
    except GlandsegError as exc:
        raise GlandsegError(f"{p}: {exc}") from exc
    return metrics


def partial_note(metrics: Mapping[str, Any]) -> str:
    """``""`` for a result on the full official test parts; else which parts are partial,
    e.g. ``"testA 5 of 60 images, testB 5 of 20 images"``.

    A part is partial when ``metrics.json`` marks it ``"partial": true`` or its
    ``n_images`` is below :data:`OFFICIAL_IMAGES` (a missing ``n_images`` is not judged).
    """
    notes = []
    for part, official in OFFICIAL_IMAGES.items():
        section = metrics.get(part)
        if not isinstance(section, Mapping):
            continue
        n = section.get("n_images")
        known = isinstance(n, int) and not isinstance(n, bool)
        if section.get("partial") is True or (known and n < official):
            notes.append(f"{part} {n if known else '?'} of {official} images")
    return ", ".join(notes)


def competition_ranks(
    values: Sequence[float], higher_is_better: bool, decimals: int | None = None
) -> list[int]:
    """Standard competition ranks ("1224") of ``values``; NaN ranks last (ties with NaN).

    ``decimals`` rounds before comparing (values printed alike tie).
    """

    def key(v: float) -> float:
        if not math.isfinite(v):
            return math.inf
        if decimals is not None:
            v = round(v, decimals)
        return -v if higher_is_better else v

    keys = [key(v) for v in values]
    return [1 + sum(k2 < k for k2 in keys) for k in keys]


def is_ranked(kind: str) -> bool:
    """Whether rows of ``kind`` are ranked: the 2015 challenge entries
    (:data:`RANKED_KINDS`) and our full results (:data:`OURS`)."""
    return kind in RANKED_KINDS or kind == OURS


def unranked_note(kind: str) -> str:
    """Why a row of ``kind`` is not ranked (its footnote), ``""`` for a ranked kind."""
    if is_ranked(kind):
        return ""
    return FOOTNOTES.get(kind, f"kind {kind!r}: not an official challenge result, not ranked")


def rank_many(
    results: Mapping[str, Mapping[str, Any]],
    table: Iterable[Method] | None = None,
    kinds: Iterable[str] | None = DEFAULT_KINDS,
    decimals: int | None = DEFAULT_DECIMALS,
) -> list[Row]:
    """Rank several of our results (``name → metrics.json dict``) with the 2015 entries.

    ``table``: published methods (default: the packaged table); ``kinds``: which kinds of
    published rows to list (default :data:`DEFAULT_KINDS`, every kind; ``None`` = all).
    Only the challenge entries and our full results are ranked (together: several results
    of ours rank against each other too); our rows get kind :data:`OURS`, partial results
    (:func:`partial_note`) kind :data:`PARTIAL`. Returns the ranked rows sorted by place
    (then by the table's order), then the unranked ones in the order of
    :data:`UNRANKED_ORDER` (then the table's), each with ``note`` saying why.
    """
    published = load_published() if table is None else list(table)
    if kinds is not None:
        kinds = set(kinds)
        published = [m for m in published if m.kind in kinds]
    entries = [m for m in published if is_ranked(m.kind)]
    unranked = [
        Row(method=m.method, kind=m.kind, values=dict(m.values), rank_sum=None, place=None,
            year=m.year, source=m.source, note=unranked_note(m.kind))
        for m in published if not is_ranked(m.kind)
    ]
    taken = {m.method for m in published}
    for name, metrics in results.items():
        if name in taken:
            raise GlandsegError(
                f"name {name!r} is already a row of the table; pick another name (--name)"
            )
        taken.add(name)
        note = partial_note(metrics)
        if note:
            log.warning("%s: partial result (%s); listed, not ranked", name, note)
            unranked.append(Row(method=name, kind=PARTIAL, values=metrics_values(metrics),
                                rank_sum=None, place=None, note=note))
            continue
        entries.append(Method(method=name, kind=OURS, values=metrics_values(metrics)))

    rows = [
        Row(method=m.method, kind=m.kind, values=dict(m.values), year=m.year, source=m.source)
        for m in entries
    ]
    for col, _, _, higher in COLUMNS:
        ranks = competition_ranks([r.values[col] for r in rows], higher, decimals)
        for r, k in zip(rows, ranks, strict=True):
            r.ranks[col] = k
    for r in rows:
        r.rank_sum = sum(r.ranks.values())
    places = competition_ranks([float(r.rank_sum) for r in rows], higher_is_better=False)
    for r, p in zip(rows, places, strict=True):
        r.place = p
    order = sorted(range(len(rows)), key=lambda i: (rows[i].place, i))

    def group(r: Row) -> int:
        return UNRANKED_ORDER.index(r.kind) if r.kind in UNRANKED_ORDER else len(UNRANKED_ORDER)

    # sorted() is stable: within a group, the table's order (then ours, in the given order)
    return [rows[i] for i in order] + sorted(unranked, key=group)


def rank(
    metrics: Mapping[str, Any],
    name: str,
    table: Iterable[Method] | None = None,
    kinds: Iterable[str] | None = DEFAULT_KINDS,
    decimals: int | None = DEFAULT_DECIMALS,
) -> list[Row]:
    """Rank one result (a ``metrics.json`` dict) named ``name``; see :func:`rank_many`."""
    return rank_many({name: metrics}, table=table, kinds=kinds, decimals=decimals)


def _fmt_value(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table like the study's Fig. 5: place, method, the six values each with
    its rank in parentheses, and the rank sum. Unranked rows (:attr:`Row.ranked` false)
    follow the ranked ones below a rule, with ``-`` for every rank; footnotes explain each
    mark (why a row is not ranked) and name each partial result's images."""
    header = ["Place", "Method", *(HEADERS[c] for c in COLUMN_NAMES), "Rank sum"]
    ranked = [r for r in rows if r.ranked]
    unranked = [r for r in rows if not r.ranked]
    body = [
        [
            str(r.place),
            f"{r.method}{r.marker}",
            *(f"{_fmt_value(r.values[c])} ({r.ranks[c]})" for c in COLUMN_NAMES),
            str(r.rank_sum),
        ]
        for r in ranked
    ]
    body += [["-", f"{r.method}{r.marker}",
              *(f"{_fmt_value(r.values[c])} (-)" for c in COLUMN_NAMES), "-"]
             for r in unranked]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    left = {1}  # the method column is left-aligned, numbers right-aligned

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule]
    out += [line(b) for b in body[: len(ranked)]]
    if unranked:
        out += [rule, *(line(b) for b in body[len(ranked):])]
    return "\n".join(out + [""] + footnotes(rows)) + "\n"


def footnotes(rows: Sequence[Row]) -> list[str]:
    """The notes printed under a table of ``rows``: what is ranked, one line per mark
    present (why a row is or is not ranked), each partial result's images, the metrics."""
    kinds_present = {r.kind for r in rows}
    notes = ["Ranked: the 2015 GlaS challenge entries and this work only"
             + ("; rows below the rule are listed for reference, unranked."
                if any(not r.ranked for r in rows) else ".")]
    notes += [f"{MARKERS[k]} {FOOTNOTES[k]}" for k in ("seed_claim", "later_method", OURS,
                                                        PARTIAL) if k in kinds_present]
    notes += [f"{MARKERS[PARTIAL]} {r.method}: {r.note}" for r in rows if r.kind == PARTIAL]
    notes += [f"{r.method}: {r.note}" for r in rows
              if not r.ranked and r.kind not in MARKERS and r.note]
    notes.append(
        "Object Hausdorff in pixels, lower is better; per metric and part, competition "
        "ranking (ties share the best rank); the rank sum orders the methods."
    )
    return notes


def rows_to_csv(rows: Sequence[Row]) -> str:
    """The ranked rows as CSV text (columns of :meth:`Row.as_dict`)."""
    buf = io.StringIO()
    dicts = [r.as_dict() for r in rows]
    fields = list(dicts[0]) if dicts else ["place", "method", "kind"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for d in dicts:
        writer.writerow({k: ("" if v is None else v) for k, v in d.items()})
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[Row]) -> None:
    """Write the ranked rows as CSV, atomically."""
    from glandseg.data.io import write_text

    write_text(path, rows_to_csv(rows))
