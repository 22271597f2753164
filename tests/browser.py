"""Headless Chromium (Debian's `chromium`) opens a page: its console messages and rendered DOM."""
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium")
# Flags that keep a headless start quiet and offline on a machine without network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom"]


def open_page(page: Path) -> tuple[list[str], str]:
    """(console messages, DOM after scripts ran) of a local HTML file."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return console, done.stdout


def undrawn_figures(dom: str) -> list[str]:
    """Ids of plotly figure divs that hold no drawn SVG."""
    chunks = re.split(r'(?=<div id="figure-\d+")', dom)
    figures = [c for c in chunks if c.startswith('<div id="figure-')]
    return [re.match(r'<div id="(figure-\d+)"', c).group(1) for c in figures if "main-svg" not in c]


def figure_count(dom: str) -> int:
    return len(re.findall(r'<div id="figure-\d+"', dom))
