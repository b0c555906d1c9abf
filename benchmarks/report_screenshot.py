"""The first screen of a run's report as a PNG, taken by headless Chromium at 1400 px width.

    python benchmarks/report_screenshot.py [--report results/synthetic/report] [--out docs/images/report.png]

What a reader sees on opening ``index.html``: the table of contents, the summary, the findings and the top of
the headline table. Needs Debian's ``chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1400, 1100
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--hide-scrollbars")


def screenshot(page: Path, target: Path, width: int = WIDTH, height: int = HEIGHT) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("report_screenshot: Chromium not found (apt-get install chromium)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={target.resolve()}", page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    print(f"{target}: first screen of {page} at {width}×{height}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=REPO / "results" / "synthetic" / "report")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "report.png")
    args = parser.parse_args()
    page = args.report / "index.html"
    if not page.is_file():
        sys.exit(f"report_screenshot: {page} not found; run the pipeline first (make run)")
    screenshot(page, args.out)


if __name__ == "__main__":
    main()
