"""The committed reports under reports/ open in headless Chromium with no console message and
every chart drawn, and each is what `harness report` makes from its committed rows."""
import subprocess
import sys

import pytest

from browser import figure_count, needs_chromium, open_page, undrawn_figures
from conftest import REPO

PAGES = sorted((REPO / "reports").glob("*.html"))
ROWS = sorted(p.parent for p in (REPO / "reports").glob("*/trials.parquet"))


@needs_chromium
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_shipped_report_page_loads_and_draws(page):
    console, dom = open_page(page)
    assert console == [], console
    assert undrawn_figures(dom) == []
    if page.name != "index.html":
        assert figure_count(dom) >= 1


@pytest.mark.parametrize("rows", ROWS, ids=[p.name for p in ROWS])
def test_shipped_report_is_rebuilt_from_its_committed_rows(rows, tmp_path):
    """`harness report reports/<study>` from the committed Parquet writes the committed Markdown
    exactly, into another folder (the gallery, made from a checkpoint that is not committed, is the
    one beside the rows, carried over)."""
    gallery = REPO / "reports" / f"{rows.name}_gallery.png"
    subprocess.run([sys.executable, "-m", "harness.cli", "report", str(rows), "--out", str(tmp_path)],
                   check=True, capture_output=True, cwd=REPO)
    assert (tmp_path / f"{rows.name}.md").read_text() == (REPO / "reports" / f"{rows.name}.md").read_text()
    assert (tmp_path / gallery.name).read_bytes() == gallery.read_bytes()
