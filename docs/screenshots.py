"""Screenshots of the built documentation pages with headless Chromium, for a reviewer.

    python docs/screenshots.py                      # build the site, write docs/screenshots/*.png
    python docs/screenshots.py --site site/ --out /tmp/shots --page segment --page serve

It builds the site with ``mkdocs build --strict`` into a temporary folder (or takes a built one
with ``--site``), opens each page from the files (``file://``, no server) in headless Chromium
and saves a PNG per page. Needs Debian's ``chromium`` (``apt-get install chromium``); the test
that runs it (``tests/docs/test_site.py``) is skipped where it is absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "index": "index.html",
    "cli-reference": "reference/cli/dpnet-segment/index.html",
    "segment": "segment/index.html",
    "serve": "serve/index.html",
}
"""Screenshot name -> the page's file in the built site."""
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or ``None``."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def build_site(target: Path) -> Path:
    """``mkdocs build --strict`` of this repository into ``target``."""
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(target)],
        cwd=ROOT, check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    return target


def screenshot(chromium: str, page: Path, png: Path, *, width: int, height: int) -> Path:
    """One page as a ``width`` x ``height`` PNG (the top of the page)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        subprocess.run(
            [
                chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--force-device-scale-factor=1",
                f"--window-size={width},{height}", "--virtual-time-budget=4000",
                f"--screenshot={png}", page.resolve().as_uri(),
            ],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {page}")
    return png


def main(argv: list[str] | None = None) -> int:
    """Build (or take) the site and write one PNG per page; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, help="a built site (default: build one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--page", action="append", choices=sorted(PAGES), help="repeatable")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    options = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("error: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dpnet-site-") as temporary:
        site = options.site or build_site(Path(temporary) / "site")
        for name in options.page or list(PAGES):
            png = screenshot(
                chromium, site / PAGES[name], options.out / f"{name}.png",
                width=options.width, height=options.height,
            )  # fmt: skip
            print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
