"""The README's screenshots of ``report.html``, taken in headless Chromium (Debian's
``chromium``): the page around the per-image table, and one error overlay opened from the
address (``#view=STEM``). Input: a folder written by ``glandseg evaluate``.

    glandseg evaluate --model glas-unet --data ../shared/glas --out runs/eval-report
    .venv/bin/python results/grading/report_screenshots.py runs/eval-report [--view testB_16]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def _chromium(browser: str, url: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--virtual-time-budget=5000", *args, url],
                          capture_output=True, text=True, timeout=180, check=False)


def section_top(browser: str, report: Path, section: str) -> int:
    """The page y (CSS px) of element ``#section``, measured in Chromium on a copy of the
    page (beside it, so that relative image paths resolve) that writes it into the DOM."""
    probe = report.with_name(".screenshot_probe.html")
    js = (f"<script>addEventListener('load',()=>{{document.body.dataset.top="
          f"Math.round(document.getElementById('{section}').getBoundingClientRect().top"
          f"+scrollY);}});</script></body>")
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", js),
                     encoding="utf-8")
    try:
        dom = _chromium(browser, probe.as_uri(), ["--window-size=1300,900", "--dump-dom"]).stdout
    finally:
        probe.unlink()
    m = re.search(r'data-top="(\d+)"', dom)
    if not m:
        raise SystemExit(f"could not find #{section} in {report}")
    return int(m.group(1))


def shot(browser: str, url: str, size: tuple[int, int], out: Path,
         box: tuple[int, int, int, int] | None = None) -> None:
    """Screenshot ``url`` in a ``size`` window, cropped to ``box`` (left, top, right, bottom)."""
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "shot.png"
        _chromium(browser, url, [f"--window-size={size[0]},{size[1]}", f"--screenshot={png}"])
        if not png.is_file():
            raise SystemExit(f"Chromium wrote no screenshot of {url}")
        im = Image.open(png).convert("RGB")
        (im.crop(box) if box else im).save(out, quality=85)
    print(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="output folder of glandseg evaluate (with report.html)")
    ap.add_argument("--view", default="testB_16", help="image whose error overlay is shown")
    args = ap.parse_args()
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(n)), None)
    if browser is None:
        raise SystemExit("Chromium not found (apt-get install chromium)")
    report = (Path(args.folder) / "report.html").resolve()
    if not report.is_file():
        raise SystemExit(f"{report}: not found; run glandseg evaluate first")
    top = section_top(browser, report, "images")
    shot(browser, report.as_uri(), (1300, top + 900), HERE / "report_table.jpg",
         (0, top, 1300, top + 840))
    # the overlay dialog, centred in a 1300 x 1000 window
    shot(browser, report.as_uri() + f"#view={args.view}", (1300, 1000),
         HERE / "report_overlay.jpg", (250, 175, 1050, 820))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
