"""report.html's leaderboard: ranked rows first, the unranked ones (the study's rows, later
methods, partial results) below, marked, with the footnotes that say why."""

from __future__ import annotations

import re
from pathlib import Path

from glandseg.report import leaderboard as lb
from glandseg.report.html import write_report


def _metrics(v: float, n_a: int = 60, n_b: int = 20) -> dict:
    def part(n: int) -> dict:
        pooled = {"f1": v, "object_dice": v, "object_hausdorff": 100 * (1 - v)}
        return {"n_images": n, "pooled": pooled, "per_image": dict(pooled)}

    return {"testA": part(n_a), "testB": part(n_b)}


def _rows(page: str, title: str) -> list[list[str]]:
    """The text of each body row's cells in the table under heading ``title``."""
    table = page.split(f"<h3>{title}</h3>", 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    return [[re.sub("<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]


def test_report_leaderboard_ranks_only_official_rows(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    out.mkdir()
    # good enough to beat every 2015 entry, not DTU-MASKRCNN's non-official figures
    lb.write_csv(out / "leaderboard_split_gt.csv", lb.rank(_metrics(0.91), "ours"))
    lb.write_csv(out / "leaderboard.csv", lb.rank(_metrics(0.5, n_a=5), "quick"))
    page = write_report(out, "t").read_text(encoding="utf-8")
    split = _rows(page, "ground-truth regions split")
    assert split[0][:2] == ["1", "ours+"]  # first place: DTU-MASKRCNN* is not ranked
    gap = next(i for i, r in enumerate(split) if len(r) == 1)
    assert "not ranked" in split[gap][0]
    ranked, unranked = split[:gap], split[gap + 1:]
    assert len(ranked) == 11 and all(r[0] != "-" for r in ranked)
    assert {r[1] for r in unranked} >= {"DTU-MASKRCNN*", "DTU-UNET*", "SDT^"}
    assert all(r[0] == "-" and r[-1] == "-" for r in unranked)
    given = _rows(page, "annotations as given")
    quick = next(r for r in given if len(r) > 1 and r[1] == "quick~")
    assert quick[0] == "-"
    # the footnotes explain every mark, and the partial row's images
    text = re.sub(r"\s+", " ", page)
    assert "* the study&#x27;s own row, scored with a non-official metric" in text
    assert "^ published after the 2015 challenge" in text
    assert "~ quick (annotations as given): testA 5 of 60 images" in text
