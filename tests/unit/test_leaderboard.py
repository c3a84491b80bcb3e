"""Leaderboard: competition ranking, rank sums, the packaged table and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from glandseg import GlandsegError
from glandseg.cli import main
from glandseg.report import leaderboard as lb


def _metrics(f1a, f1b, da, db, ha, hb) -> dict:
    def part(f1, d, h, n):
        pooled = {"f1": f1, "object_dice": d, "object_hausdorff": h, "tp": 1, "fp": 0, "fn": 0}
        return {"n_images": n, "pooled": pooled, "per_image": dict(pooled), "bce": 0.1}

    return {"testA": part(f1a, da, ha, 60), "testB": part(f1b, db, hb, 20)}


def _method(name, vals, kind="challenge_entry") -> lb.Method:
    return lb.Method(method=name, kind=kind, values=dict(zip(lb.COLUMN_NAMES, vals, strict=True)))


def test_competition_ranks_1224() -> None:
    assert lb.competition_ranks([0.9, 0.8, 0.8, 0.7], higher_is_better=True) == [1, 2, 2, 4]
    assert lb.competition_ranks([0.9, 0.9, 0.9], higher_is_better=True) == [1, 1, 1]
    # lower is better (Hausdorff)
    assert lb.competition_ranks([50.0, 30.0, 30.0, 10.0], higher_is_better=False) == [4, 2, 2, 1]
    # NaN ranks last
    assert lb.competition_ranks([float("nan"), 1.0], higher_is_better=False) == [2, 1]
    # rounding to the table's precision makes values printed alike tie
    assert lb.competition_ranks([0.9121, 0.912], True, decimals=3) == [1, 1]
    assert lb.competition_ranks([0.9121, 0.912], True, decimals=None) == [1, 2]


def test_rank_ties_hausdorff_and_rank_sum_order() -> None:
    table = [
        _method("A", (0.9, 0.8, 0.9, 0.8, 50.0, 100.0)),
        _method("L", (0.99, 0.99, 0.99, 0.99, 1.0, 1.0), kind="later_method"),
        _method("B", (0.8, 0.8, 0.8, 0.7, 40.0, 90.0)),
        _method("S", (0.95, 0.95, 0.95, 0.95, 10.0, 10.0), kind="seed_claim"),
    ]
    rows = lb.rank(_metrics(0.9, 0.7, 0.8, 0.9, 60.0, 90.0), "ours", table=table)
    by = {r.method: r for r in rows}
    assert set(by) == {"A", "B", "S", "L", "ours"}
    # only the challenge entries and ours are ranked, although S and L beat every one
    assert [r.method for r in rows if r.ranked] == ["A", "B", "ours"]
    assert rows[-2:] == [by["S"], by["L"]]  # unranked below: the study's rows, then later
    for m in ("S", "L"):
        assert by[m].place is None and by[m].rank_sum is None and by[m].ranks == {}
    assert "non-official metric" in by["S"].note and "after the 2015" in by["L"].note
    # F1 A: A .9 and ours .9 tie (1, 1), B .8 (3)
    assert [by[m].ranks["f1_a"] for m in ("A", "ours", "B")] == [1, 1, 3]
    # F1 B: A and B tie at .8 (1, 1), ours .7 (3)
    assert [by[m].ranks["f1_b"] for m in ("A", "B", "ours")] == [1, 1, 3]
    # object Dice A: A (1), B and ours tie at .8 (2, 2); Dice B: ours .9, A .8, B .7
    assert [by[m].ranks["object_dice_a"] for m in ("A", "B", "ours")] == [1, 2, 2]
    assert [by[m].ranks["object_dice_b"] for m in ("ours", "A", "B")] == [1, 2, 3]
    # Hausdorff: lower is better; A: B 40 (1), A 50 (2), ours 60 (3); B: B, ours 90 tie
    assert [by[m].ranks["object_hausdorff_a"] for m in ("B", "A", "ours")] == [1, 2, 3]
    assert [by[m].ranks["object_hausdorff_b"] for m in ("B", "ours", "A")] == [1, 1, 3]
    # A: 1+1+1+2+2+3 = 10; B: 3+1+2+3+1+1 = 11; ours: 1+3+2+1+3+1 = 11 -> tie shares place 2
    assert by["A"].rank_sum == 10 and by["A"].place == 1
    assert by["ours"].rank_sum == by["B"].rank_sum == 11
    assert by["ours"].place == by["B"].place == 2
    assert by["S"].marker == "*" and by["L"].marker == "^" and by["A"].marker == ""
    assert by["ours"].kind == lb.OURS and by["ours"].marker == "+"

    only = lb.rank(_metrics(0.9, 0.7, 0.8, 0.9, 60.0, 90.0), "ours", table,
                   kinds=lb.RANKED_KINDS)
    assert [r.method for r in only] == ["A", "B", "ours"]
    assert [(r.place, r.ranks) for r in only] == [(r.place, r.ranks) for r in rows[:3]]


def test_two_results_of_ours_rank_against_each_other() -> None:
    table = [_method("A", (0.9, 0.8, 0.9, 0.8, 50.0, 100.0))]
    rows = lb.rank_many({"x": _metrics(0.95, 0.9, 0.95, 0.9, 40.0, 90.0),
                         "y": _metrics(0.8, 0.7, 0.8, 0.7, 60.0, 110.0)}, table=table)
    assert [(r.method, r.place, r.rank_sum) for r in rows] == [
        ("x", 1, 6), ("A", 2, 12), ("y", 3, 18)]


def test_packaged_table_and_table_format() -> None:
    table = lb.load_published()
    kinds = {m.kind for m in table}
    assert kinds == set(lb.ALL_KINDS)
    assert {"CUMedVision2", "DTU-UNET", "DTU-MASKRCNN", "SDT"} <= {m.method for m in table}
    # the packaged table holds the shared reference's rows
    assert sum(m.kind == "challenge_entry" for m in table) == 10
    rows = lb.rank_many(
        {
            "unet": _metrics(0.9, 0.75, 0.88, 0.79, 50.0, 150.0),
            "maskrcnn": _metrics(0.91, 0.8, 0.89, 0.8, 45.0, 120.0),
        }
    )
    assert len(rows) == len(table) + 2
    ranked = [r for r in rows if r.ranked]
    assert {r.kind for r in ranked} == {"challenge_entry", lb.OURS} and len(ranked) == 12
    assert rows[: len(ranked)] == ranked  # every unranked row comes after the ranked ones
    unranked = rows[len(ranked):]
    assert [r.kind for r in unranked] == sorted(
        (r.kind for r in unranked), key=lambda k: ("seed_claim", "later_method").index(k))
    text = lb.format_table(rows)
    lines = text.splitlines()
    assert "DTU-UNET*" in text and "DTU-MASKRCNN*" in text and "SDT^" in text
    # DTU-MASKRCNN* beats every value but stands below the rule, without place or ranks
    dtu = next(ln for ln in lines if "DTU-MASKRCNN*" in ln)
    assert dtu.split()[0] == "-" and "(1)" not in dtu
    rules = [i for i, ln in enumerate(lines) if ln.startswith("-----")]
    assert len(rules) == 2 and lines.index(dtu) > rules[1]
    assert lines[2].split()[0] == "1" and "maskrcnn+" in lines[2]
    # the footnotes say why each mark is not ranked
    assert "* the study's own row, scored with a non-official metric" in text
    assert "^ published after the 2015 challenge" in text and "not ranked" in text
    line = next(ln for ln in lines if "CUMedVision2" in ln)
    assert "0.912 (" in line and "45.418 (" in line
    all_rows = lb.rank(
        {
            "testA": {"pooled": {"f1": 1, "object_dice": 1, "object_hausdorff": 0}},
            "testB": {"pooled": {"f1": 1, "object_dice": 1, "object_hausdorff": 0}},
        },
        "perfect",
        kinds=lb.ALL_KINDS,
    )
    assert "SDT" in [r.method for r in all_rows]
    assert all_rows[0].method == "perfect" and all_rows[0].rank_sum == 6


def test_bundled_glas_unet_ranks_as_the_readme_says() -> None:
    """The README's rank claim for glas-unet is what the leaderboard computes from the
    committed evaluation (GT regions split)."""
    path = Path(lb.__file__).parents[1] / "weights" / "glas-unet.eval" / "metrics_split_gt.json"
    rows = lb.rank(lb.load_metrics(path), "glas-unet")
    ours = next(r for r in rows if r.method == "glas-unet")
    assert [ours.ranks[c] for c in lb.COLUMN_NAMES] == [5, 2, 3, 1, 7, 1]
    assert ours.place == 1 and ours.rank_sum == 19
    assert sum(r.ranked for r in rows) == 11  # ten 2015 entries + glas-unet
    readme = Path(lb.__file__).parents[2] / "README.md"
    if readme.is_file():  # a source checkout
        text = " ".join(readme.read_text(encoding="utf-8").replace("**", "").split())
        assert ("1st by rank sum (19; CUMedVision2 20) (per-figure ranks: F1 A 5, F1 B 2, "
                "Dice A 3, Dice B 1, Hausdorff A 7, Hausdorff B 1") in text


def test_bad_metrics_and_name_clash() -> None:
    with pytest.raises(GlandsegError, match="testB"):
        lb.metrics_values({"testA": _metrics(1, 1, 1, 1, 0, 0)["testA"]})
    bad = _metrics(1, 1, 1, 1, 0, 0)
    bad["testA"]["pooled"]["f1"] = "high"
    with pytest.raises(GlandsegError, match="f1"):
        lb.metrics_values(bad)
    with pytest.raises(GlandsegError, match="already a row"):
        lb.rank(_metrics(1, 1, 1, 1, 0, 0), "CUMedVision2")


def test_cli_prints_our_row_and_writes_csv(tmp_path: Path, capsys) -> None:
    p = tmp_path / "metrics.json"
    p.write_text(json.dumps(_metrics(0.95, 0.93, 0.93, 0.9, 30.0, 60.0)))
    out_csv = tmp_path / "lb.csv"
    assert main(["leaderboard", str(p), "--name", "my-unet", "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[2]
    assert first.split()[0] == "1" and "my-unet+" in first  # best on every metric
    assert "CUMedVision2" in out and "SDT^" in out and "DTU-MASKRCNN*" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert rows[0]["method"] == "my-unet" and rows[0]["rank_sum"] == "6"
    sdt = next(r for r in rows if r["method"] == "SDT")
    assert sdt["place"] == sdt["rank_sum"] == sdt["f1_a_rank"] == ""
    assert sdt["kind"] == "later_method" and "not ranked" in sdt["note"]

    assert main(["leaderboard", str(p), "--ranked-only"]) == 0
    out = capsys.readouterr().out
    assert "SDT" not in out and "DTU-MASKRCNN" not in out and "CUMedVision2" in out
    # default name: the folder of a file called metrics.json
    assert main(["leaderboard", str(p)]) == 0
    assert tmp_path.name in capsys.readouterr().out


@pytest.mark.parametrize(
    "content", ['{"testA": {"pooled": {}}}', "not json {", '{"testB": 3}', "[1, 2]"]
)
def test_cli_error_on_malformed_json(tmp_path: Path, capsys, content: str) -> None:
    p = tmp_path / "broken_metrics.json"
    p.write_text(content)
    assert main(["leaderboard", str(p)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken_metrics.json" in err


def test_cli_error_on_missing_file(tmp_path: Path, capsys) -> None:
    assert main(["leaderboard", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert "nope.json" in err and "not found" in err


def test_partial_results_listed_not_ranked() -> None:
    full = _metrics(0.9, 0.7, 0.8, 0.9, 60.0, 90.0)
    limited = _metrics(1.0, 1.0, 1.0, 1.0, 0.0, 0.0)  # perfect, but on 5 + 5 images
    limited["testA"]["n_images"] = limited["testB"]["n_images"] = 5
    flagged = _metrics(1.0, 1.0, 1.0, 1.0, 0.0, 0.0)  # all images counted, yet marked
    flagged["testB"]["partial"] = True
    assert lb.partial_note(full) == ""
    assert lb.partial_note(limited) == "testA 5 of 60 images, testB 5 of 20 images"
    assert lb.partial_note(flagged) == "testB 20 of 20 images"
    alone = lb.rank_many({"full": full}, kinds=lb.RANKED_KINDS)
    rows = lb.rank_many({"full": full, "lim": limited, "flag": flagged},
                        kinds=lb.RANKED_KINDS)
    # the partial rows change no one's rank and come last, without a place
    assert [(r.method, r.place, r.ranks) for r in rows[:-2]] == [
        (r.method, r.place, r.ranks) for r in alone]
    assert [r.method for r in rows[-2:]] == ["lim", "flag"]
    assert all(r.kind == lb.PARTIAL and r.place is None and not r.ranks for r in rows[-2:])
    # with the unranked published rows too, ours come first below the rule
    every = lb.rank_many({"full": full, "lim": limited})
    first_unranked = next(r for r in every if not r.ranked)
    assert first_unranked.method == "lim"
    text = lb.format_table(rows)
    lines = text.splitlines()
    lim_line = next(ln for ln in lines if "lim~" in ln)
    assert lim_line.split()[0] == "-" and "(1)" not in lim_line
    assert lines.index(lim_line) > max(i for i, ln in enumerate(lines) if "full+" in ln)
    assert "not ranked" in text and "lim: testA 5 of 60 images" in text
    csv_rows = list(csv.DictReader(lb.rows_to_csv(rows).splitlines()))
    assert csv_rows[-2]["method"] == "lim" and csv_rows[-2]["place"] == ""
    assert csv_rows[-2]["kind"] == "ours_partial" and csv_rows[-2]["f1_a_rank"] == ""


def test_cli_marks_partial_metrics(tmp_path: Path, capsys) -> None:
    m = _metrics(0.95, 0.93, 0.93, 0.9, 30.0, 60.0)
    for part in ("testA", "testB"):
        m[part].update(n_images=1, n_images_total=m[part]["n_images"], partial=True)
    p = tmp_path / "quick" / "metrics.json"
    p.parent.mkdir()
    p.write_text(json.dumps(m))
    assert main(["leaderboard", str(p)]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[2]
    assert "quick" not in first  # not placed first although best on every value
    assert "quick~" in out and "PARTIAL" in out and "testA 1 of 60 images" in out
