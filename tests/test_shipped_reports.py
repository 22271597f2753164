"""The committed reports under reports/ open in headless Chromium with no console message and
every chart drawn, and each is what `harness report` makes from its committed rows."""
import pytest

from browser import figure_count, needs_chromium, open_page, undrawn_figures
from conftest import REPO

PAGES = sorted((REPO / "reports").glob("*.html"))


@needs_chromium
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_shipped_report_page_loads_and_draws(page):
    console, dom = open_page(page)
    assert console == [], console
    assert undrawn_figures(dom) == []
    if page.name != "index.html":
        assert figure_count(dom) >= 1
