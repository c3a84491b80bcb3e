"""Self-contained HTML pages: ``report.html`` of ``glandseg evaluate`` and ``index.html`` of
``glandseg predict``.

Both are single files that open from disk in any browser (no server, no internet): styles
and scripts are inline, images are the PNG/JPEG files beside the page (relative links).

``report.html`` (:func:`write_report`) is built from the files an evaluation folder holds:
``metrics.json`` / ``metrics_split_gt.json`` (pooled and per-image-mean tables),
``leaderboard.csv`` / ``leaderboard_split_gt.csv``, ``grading.json`` / ``grades.csv``
(benign/malignant results), ``fig4_testA.png`` / ``fig4_testB.png``, ``per_image.csv`` /
``per_image_split_gt.csv`` and ``errors/<stem>.json`` (error overlays,
:mod:`glandseg.report.error_overlay`). Its per-image table has one row per scored image,
sorts by any column (click a header), and each row's thumbnail opens the error overlay
large, with each object's kind and Dice on hover. Files that are missing leave their
section out.

``index.html`` (:func:`index_html`) is a gallery of ``predict``'s overlays with gland
counts, grades and links to each image's files.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glandseg import __version__
from glandseg.data.io import write_text

REPORT_NAME = "report.html"
INDEX_NAME = "index.html"

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1400px;padding:0 16px 40px;color:#222;background:#fff}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;
border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}td.l,th.l{text-align:left}
tr.ours td{background:#fff6d6;font-weight:600}tr.partial td{color:#777}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th.asc::after{content:" \\25B2"}table.sortable th.desc::after{content:" \\25BC"}
td.thumb{padding:2px}td.thumb img{width:120px;display:block}
.wide{overflow-x:auto}
table.per-image{font-size:12px}table.per-image th{white-space:normal;min-width:38px}
.figs img{max-width:100%;width:1000px;border:1px solid #ddd;margin:4px 0}
.note{color:#555;font-size:13px;max-width:900px}
.bad{color:#b00020;font-weight:600}.good{color:#0a7a2f;font-weight:600}
dialog{max-width:96vw;max-height:96vh;padding:8px;border:1px solid #888}
dialog svg{max-width:92vw;max-height:84vh;display:block}
#vinfo{font-size:13px;min-height:18px;margin:4px 0}
path.obj{fill:transparent;stroke:none;cursor:crosshair}
path.obj:hover{fill:rgba(255,255,255,.35);stroke:#fff;stroke-width:2}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;padding:6px;width:260px;font-size:13px}
.card img{width:100%;display:block}
.tag{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-size:12px}
.tag.malignant{background:#b00020}.tag.benign{background:#0a7a2f}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var tb=t.tBodies[0],rows=Array.prototype.slice.call(tb.rows);
    var asc=!th.classList.contains('asc');
    t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc?'asc':'desc');
    rows.sort(function(a,b){
      var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
      var nx=parseFloat(x),ny=parseFloat(y),c;
      if(!isNaN(nx)&&!isNaN(ny)){c=nx-ny;}else if(isNaN(nx)!==isNaN(ny)){return isNaN(nx)?1:-1;}
      else{c=String(x).localeCompare(String(y),undefined,{numeric:true});}
      return asc?c:-c;});
    rows.forEach(function(r){tb.appendChild(r);});
  });});
});
"""

_VIEW_JS = """
var VIEWS=JSON.parse(document.getElementById('views').textContent);
var NAMES={pred:'prediction',truth:'ground truth'};
function openView(stem){
  var v=VIEWS[stem];if(!v){return false;}
  var d=document.getElementById('viewer'),box=document.getElementById('vbox');
  var ns='http://www.w3.org/2000/svg',svg=document.createElementNS(ns,'svg');
  var W=v.image_width||v.width,H=v.image_height||v.height;
  svg.setAttribute('viewBox','0 0 '+W+' '+H);svg.setAttribute('width',W);
  var im=document.createElementNS(ns,'image');im.setAttribute('href',v.image);
  im.setAttribute('x',0);im.setAttribute('y',0);im.setAttribute('width',W);
  im.setAttribute('height',H);svg.appendChild(im);
  v.objects.forEach(function(o){
    if(!o.d){return;}
    var p=document.createElementNS(ns,'path');p.setAttribute('d',o.d);
    p.setAttribute('class','obj '+o.side);p.setAttribute('fill-rule','evenodd');
    var txt=NAMES[o.side]+' '+o.id+': '+o.kind+', Dice '+o.dice.toFixed(3)+', '+o.area+' px';
    var t=document.createElementNS(ns,'title');t.textContent=txt;p.appendChild(t);
    p.addEventListener('mouseenter',function(){document.getElementById('vinfo').textContent=txt;});
    svg.appendChild(p);});
  box.innerHTML='';box.appendChild(svg);
  document.getElementById('vtitle').textContent=stem+': missed '+v.counts.missed+
    ', false '+v.counts.false+', merged '+v.counts.merged+', split '+v.counts.split+
    ' (hover an object for its Dice)';
  document.getElementById('vinfo').textContent='';
  d.showModal();return true;
}
document.querySelectorAll('a.view').forEach(function(a){a.addEventListener('click',function(e){
  if(openView(a.getAttribute('data-stem'))){e.preventDefault();}});});
document.getElementById('viewer').addEventListener('click',function(e){
  if(e.target===this){this.close();}});
if(location.hash.indexOf('#view=')===0){openView(decodeURIComponent(location.hash.slice(6)));}
"""


# ------------------------------------------------------------------------------ helpers


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def href(path: Any) -> str:
    """An inert relative URL of a file beside the page, for ``href``/``src`` attributes:
    ``./`` + the percent-encoded path (``/`` kept), so no file name can become a
    ``javascript:`` (or any other scheme's) link, a query or a fragment; HTML-escaped."""
    return _e("./" + urllib.parse.quote(str(path).removeprefix("./"), safe="/"))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _fmt(v: Any, nd: int = 3) -> str:
    x = _num(v)
    if math.isnan(x):
        return "" if v in (None, "") else _e(v)
    if x == int(x) and abs(x) < 1e12 and not isinstance(v, float) and "." not in str(v):
        return str(int(x))
    return f"{x:.{nd}f}"


def _td(v: Any, nd: int = 3, cls: str = "") -> str:
    x = _num(v)
    dv = "" if math.isnan(x) else repr(x)
    c = f' class="{cls}"' if cls else ""
    if math.isnan(x):
        return f'<td{c} data-v="{_e(v if v is not None else "")}">{_fmt(v, nd)}</td>'
    return f'<td{c} data-v="{dv}">{_fmt(v, nd)}</td>'


def _table(headers: Sequence[str], rows: Sequence[str], cls: str = "", left: int = 1) -> str:
    ths = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>"
                  for i, h in enumerate(headers))
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    return list(csv.DictReader(io.StringIO(text)))


def _script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def _page(title: str, body: str, scripts: Sequence[str] = ()) -> str:
    js = "".join(f"<script>{s}</script>" for s in scripts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
            f"<body>{body}{js}</body></html>\n")


# ----------------------------------------------------------------------------- sections


_METRICS = (("f1", "F1"), ("object_dice", "Obj Dice"), ("object_hausdorff", "Obj Hausdorff"),
            ("pixel_dice", "pixel Dice"), ("count_score", "count score"))


def _metrics_section(out: Path) -> str:
    parts = []
    for suffix, title in (("", "annotations as given"),
                          ("_split_gt", "ground-truth regions split")):
        m = _read_json(out / f"metrics{suffix}.json")
        if not isinstance(m, dict):
            continue
        rows = []
        for part, d in m.items():
            if not isinstance(d, dict):
                continue
            note = " (partial)" if d.get("partial") else ""
            pooled, mean = d.get("pooled", {}), d.get("per_image", {})
            n = f"{d.get('n_images', '')}" + (f" of {d.get('n_images_total')}"
                                              if d.get("partial") else "")
            rows.append("<tr>" + f'<td class="l">{_e(part)}{note}</td><td class="l">pooled '
                        "(official)</td>" + _td(n)
                        + "".join(_td(pooled.get(k)) for k, _ in _METRICS[:3])
                        + _td(None) + _td(None)
                        + "".join(_td(pooled.get(k)) for k in ("tp", "fp", "fn")) + "</tr>")
            rows.append("<tr>" + f'<td class="l">{_e(part)}{note}</td><td class="l">'
                        "per-image mean</td>" + _td(n)
                        + "".join(_td(mean.get(k)) for k, _ in _METRICS)
                        + _td(None) + _td(None) + _td(None) + "</tr>")
        parts.append(f"<h3>{_e(title)}</h3>" + _table(
            ["part", "aggregation", "images", *(h for _, h in _METRICS), "TP", "FP", "FN"],
            rows, left=2))
    if not parts:
        return ""
    return ("<h2 id=\"metrics\">Official GlaS metrics</h2><p class=\"note\">Object Hausdorff "
            "in pixels (lower is better). Pooled: all objects of a part together, weighted "
            "by area (the challenge's aggregation). \"Ground-truth regions split\": each "
            "connected region of a ground-truth label scored as its own gland (four Test B "
            "annotations give one id to several glands).</p>" + "".join(parts))


def _leaderboard_section(out: Path) -> str:
    """The leaderboard tables from ``leaderboard{,_split_gt}.csv``: ranked rows first, then
    the unranked ones (place empty) under a "not ranked" line, each method with its mark,
    and the footnotes saying what each mark means and why those rows are not ranked."""
    from glandseg.report.leaderboard import COLUMN_NAMES, FOOTNOTES, HEADERS, MARKERS, PARTIAL

    parts = []
    kinds: set[str] = set()
    partial_notes: list[str] = []
    ncols = len(COLUMN_NAMES) + 3
    for suffix, title in (("", "annotations as given"),
                          ("_split_gt", "ground-truth regions split")):
        rows = _read_csv(out / f"leaderboard{suffix}.csv")
        if not rows:
            continue
        body = []
        in_unranked = False
        for r in rows:
            kind = r.get("kind", "")
            kinds.add(kind)
            ranked = bool(r.get("place"))
            if not ranked and not in_unranked:
                in_unranked = True
                body.append(f'<tr class="partial"><td class="l" colspan="{ncols}">listed for '
                            "reference, not ranked (see the marks below)</td></tr>")
            if kind == PARTIAL and r.get("note"):
                partial_notes.append(f"{MARKERS[PARTIAL]} {r.get('method', '')} ({title}): "
                                     f"{r['note']}")
            cls = ' class="ours"' if kind == "ours" else ("" if ranked else ' class="partial"')
            cells = "".join(_td(r.get(c)) for c in COLUMN_NAMES)
            method = f"{r.get('method', '')}{MARKERS.get(kind, '')}"
            body.append(f"<tr{cls}>{_td(r.get('place') or '-')}"
                        f'<td class="l">{_e(method)}</td>{cells}'
                        f"{_td(r.get('rank_sum') or '-')}</tr>")
        parts.append(f"<h3>{_e(title)}</h3>" + _table(
            ["place", "method", *(HEADERS[c] for c in COLUMN_NAMES), "rank sum"], body,
            left=0))
    if not parts:
        return ""
    notes = [f"{MARKERS[k]} {FOOTNOTES[k]}" for k in ("seed_claim", "later_method", "ours",
                                                        PARTIAL) if k in kinds]
    notes += partial_notes
    foot = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    return ("<h2 id=\"leaderboard\">Leaderboard</h2><p class=\"note\">Ranked with the "
            "published GlaS 2015 challenge entries as the challenge did (rank per figure, rank "
            "sum); only official results are ranked (the 2015 entries and this work). The "
            "published rows can only be compared with the split table.</p>"
            + "".join(parts) + foot)


def _grading_section(out: Path) -> str:
    g = _read_json(out / "grading.json")
    if not isinstance(g, dict) or not isinstance(g.get("parts"), dict):
        return ""
    rows = []
    for part, m in g["parts"].items():
        maj = m.get("majority", {})
        rows.append(f'<tr><td class="l">{_e(part)}</td>{_td(m.get("n"))}'
                    f'{_td(m.get("accuracy"))}{_td(m.get("balanced_accuracy"))}'
                    f'{_td(m.get("roc_auc"))}<td class="l">{_e(maj.get("class", ""))}</td>'
                    f'{_td(maj.get("accuracy"))}{_td(maj.get("balanced_accuracy"))}</tr>')
    table = _table(["part", "images", "accuracy", "balanced accuracy", "ROC AUC",
                    "majority class", "majority accuracy", "majority balanced acc."], rows)
    conf = ""
    allm = g["parts"].get("all") or next(iter(g["parts"].values()), {})
    c = allm.get("confusion") if isinstance(allm, dict) else None
    if isinstance(c, dict):
        crow = [f'<tr><td class="l">truth {_e(t)}</td>'
                + "".join(_td(c.get(t, {}).get(p)) for p in ("benign", "malignant")) + "</tr>"
                for t in ("benign", "malignant")]
        conf = "<h3>Confusion matrix (all graded images)</h3>" + _table(
            ["", "predicted benign", "predicted malignant"], crow)
    gr = g.get("grader", {})
    cv = gr.get("cv_chosen") or {}
    note = (f"Grader: {_e(gr.get('feature_set', '?'))} features, logistic regression, fit on "
            f"{_e(gr.get('n_train', '?'))} training images "
            f"(leave-one-patient-out balanced accuracy {_fmt(cv.get('balanced_accuracy'))}); "
            f"segmentation {_e(gr.get('segmentation', '?'))}. The majority-class baseline "
            "always predicts the training set's commoner grade.")
    return (f'<h2 id="grading">Grading (benign / malignant)</h2><p class="note">{note}</p>'
            + table + conf)


def _figures_section(out: Path) -> str:
    imgs = [f'<h3>{p}</h3><img src="{_e(f"fig4_{p}.png")}" alt="Fig. 4 {p}">'
            for p in ("testA", "testB") if (out / f"fig4_{p}.png").is_file()]
    if not imgs:
        return ""
    return ('<h2 id="figures">Best, average and worst images (Fig. 4)</h2><div class="figs">'
            + "".join(imgs) + "</div>")


_PER_IMAGE_COLS = (("f1", "F1"), ("object_dice", "Obj Dice"),
                   ("object_hausdorff", "Obj Haus."))


def per_image_rows(out: Path, grades: bool = True) -> list[dict[str, Any]]:
    """One dict per scored image of an evaluation folder: ``per_image.csv`` joined with
    ``per_image_split_gt.csv`` (keys ``split_*``), ``grades.csv`` (``grade_*``, unless
    ``grades`` is false) and ``errors/<stem>.json`` (``view``)."""
    base = _read_csv(out / "per_image.csv")
    split = {r["stem"]: r for r in _read_csv(out / "per_image_split_gt.csv")}
    grades_ = {r["image"]: r for r in _read_csv(out / "grades.csv")} if grades else {}
    rows = []
    for r in base:
        stem = r["stem"]
        d: dict[str, Any] = dict(r)
        for k, v in split.get(stem, {}).items():
            d[f"split_{k}"] = v
        g = grades_.get(stem, {})
        d["grade_truth"] = g.get("truth", "")
        d["grade"] = g.get("grade", "")
        d["grade_probability"] = g.get("grade_probability", g.get("probability", ""))
        view = _read_json(out / "errors" / f"{stem}.json")
        d["view"] = view if isinstance(view, dict) else None
        rows.append(d)
    return rows


def _per_image_section(rows: list[dict[str, Any]]) -> tuple[str, dict]:
    views = {}
    body = []
    for r in rows:
        stem = r["stem"]
        v = r["view"]
        if v:
            views[stem] = v
            thumb = (f'<a class="view" data-stem="{_e(stem)}" href="{href(v["image"])}">'
                     f'<img loading="lazy" src="{href(v["thumb"])}" alt="{_e(stem)} errors"></a>')
            counts = v.get("counts", {})
        else:
            thumb, counts = "", {}
        ok = ""
        if r["grade"] and r["grade_truth"]:
            ok = "good" if r["grade"] == r["grade_truth"] else "bad"
        cells = [f'<td class="thumb" data-v="{_e(stem)}">{thumb}</td>',
                 f'<td class="l" data-v="{_e(stem)}">{_e(stem)}</td>',
                 f'<td class="l" data-v="{_e(r.get("part", ""))}">{_e(r.get("part", ""))}</td>',
                 _td(r.get("n_gt")), _td(r.get("n_pred"))]
        cells += [_td(r.get(k)) for k, _ in _PER_IMAGE_COLS]
        cells += [_td(r.get(f"split_{k}")) for k, _ in _PER_IMAGE_COLS]
        cells += [_td(r.get("pixel_dice"))]
        cells += [_td(counts.get(k)) for k in ("missed", "false", "merged", "split")]
        cells += [f'<td class="l" data-v="{_e(r["grade_truth"])}">{_e(r["grade_truth"])}</td>',
                  f'<td class="l {ok}" data-v="{_e(r["grade"])}">{_e(r["grade"])}</td>',
                  _td(r["grade_probability"])]
        body.append(f'<tr class="img-row" id="row-{_e(stem)}">{"".join(cells)}</tr>')
    headers = ["overlay", "image", "part", "glands truth", "glands pred",
               *(h for _, h in _PER_IMAGE_COLS), *(f"{h} split" for _, h in _PER_IMAGE_COLS),
               "pixel Dice", "missed", "false", "merged", "split", "grade", "graded",
               "p(malig.)"]
    html_ = ('<h2 id="images">Per image</h2><p class="note">Click a column header to sort; '
             "click a thumbnail to open the error overlay (hover an object for its Dice; "
             "<code>report.html#view=STEM</code> opens one directly). "
             "Overlay: ground truth yellow (just outside the gland), prediction cyan (just "
             "inside); missed glands red, false glands magenta, merged orange, split blue; "
             "numbers are each prediction's (and each missed gland's) Dice. Overlays and the "
             "missed/false/merged/split counts use the ground-truth regions split.</p>"
             + '<div class="wide">' + _table(headers, body, cls="sortable per-image", left=3)
             + "</div>")
    return html_, views


def report_html(out: str | Path, title: str | None = None, grades: bool = True) -> str:
    """The text of ``report.html`` for the evaluation folder ``out`` (module doc);
    ``grades=False`` leaves out ``grades.csv`` / ``grading.json`` (not of this run)."""
    out = Path(out)
    rows = per_image_rows(out, grades)
    per_image, views = _per_image_section(rows)
    title = title or "glandseg evaluation"
    nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("metrics", "metrics"), ("leaderboard", "leaderboard"), ("grading", "grading"),
        ("figures", "Fig. 4"), ("images", "per image")))
    head = (f"<h1>{_e(title)}</h1><p class=\"meta\">{len(rows)} images · glandseg "
            f"{_e(__version__)} · {time.strftime('%Y-%m-%d %H:%M')} · {nav}</p>")
    grading = _grading_section(out) if grades else ""
    body = (head + _metrics_section(out) + _leaderboard_section(out) + grading
            + _figures_section(out) + per_image
            + '<dialog id="viewer"><div id="vtitle"></div><div id="vinfo"></div>'
            '<div id="vbox"></div><form method="dialog"><button>close</button></form></dialog>'
            + f'<script type="application/json" id="views">{_script_json(views)}</script>')
    return _page(title, body, [_SORT_JS, _VIEW_JS])


def write_report(out: str | Path, title: str | None = None, grades: bool = True) -> Path:
    """Write ``<out>/report.html`` (atomically, :func:`report_html`); returns its path."""
    path = Path(out) / REPORT_NAME
    write_text(path, report_html(out, title, grades))
    return path


# -------------------------------------------------------------------------------- index


def index_html(images: Sequence[Mapping[str, Any]], title: str = "glandseg predictions") -> str:
    """A gallery page of ``predict``'s outputs. ``images``: one mapping per image with
    ``image`` (stem), ``n_glands``, ``grade`` / ``grade_probability`` (P(malignant); may
    be empty), ``uncertainty`` (:func:`glandseg.metrics.uncertainty.uncertainty`; may be
    empty) and ``files`` (output file names, the overlay among them). Cards are sorted
    most uncertain first (the images to correct first), those without an uncertainty last,
    in the given order. Every link is relative and inert whatever the file names
    (:func:`href`)."""
    cards = []

    def unsure(im: Mapping[str, Any]) -> float:
        u = _num(im.get("uncertainty"))
        return -1.0 if math.isnan(u) else u

    ranked = sorted(images, key=unsure, reverse=True)  # stable: ties keep their order
    for im in ranked:
        stem = str(im.get("image", ""))
        files = [str(f) for f in im.get("files", [])]
        overlay = next((f for f in files if f.endswith("_overlay.png")), None)
        img = (f'<a href="{href(overlay)}"><img loading="lazy" src="{href(overlay)}" '
               f'alt="{_e(stem)} overlay"></a>' if overlay else "")
        grade = str(im.get("grade") or "")
        p = _num(im.get("grade_probability"))
        gtag = (f' <span class="tag {_e(grade)}">{_e(grade)}'
                + ("" if math.isnan(p) else f", P(malignant) {p:.2f}") + "</span>"
                ) if grade else ""
        links = " · ".join(f'<a href="{href(f)}">{_e(f.removeprefix(stem) or f)}</a>'
                           for f in files)
        u = unsure(im)
        utag = f' <span class="tag">uncertainty {u:.2f}</span>' if u >= 0 else ""
        cards.append(f'<div class="card" id="img-{_e(stem)}">{img}<div><b>{_e(stem)}</b>: '
                     f'{_e(im.get("n_glands", ""))} glands{gtag}{utag}</div><div>{links}</div></div>')
    n = len(images)
    n_glands = sum(int(_num(im.get("n_glands")) or 0) for im in images
                   if not math.isnan(_num(im.get("n_glands"))))
    head = (f"<h1>{_e(title)}</h1><p class=\"meta\">{n} images · {n_glands} glands · "
            f'<a href="./glands.csv">glands.csv</a> · <a href="./images.csv">images.csv</a> · '
            f"glandseg {_e(__version__)}</p>")
    if any(unsure(im) >= 0 for im in images):
        head += ("<p class=\"meta\">Most uncertain first: uncertainty = share of the pixels "
                 "near glands whose interior/boundary/background decision has a probability "
                 "under 0.7; correct these images first.</p>")
    return _page(title, head + f'<div class="gallery">{"".join(cards)}</div>')
