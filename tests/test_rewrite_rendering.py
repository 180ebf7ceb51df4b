"""Rewriting changes where links go, never how the email looks: the original and the rewritten
HTML of every corpus template render to the same pixels in headless Chromium (open pixel off).

Network is cut off for both renders, so remote images fail alike and the comparison is exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hotclicks.rewrite import find_html_links, rewrite_html

from .conftest import CORPUS, require_corpus

pytestmark = [pytest.mark.browser, pytest.mark.corpus]

require_corpus()
TEMPLATES = sorted(CORPUS.glob("*.html"))


@pytest.fixture(scope="module")
def render(browser):
    context = browser.new_context(viewport={"width": 800, "height": 1000}, java_script_enabled=False)
    context.route("**/*", lambda route: route.abort())
    page = context.new_page()

    def screenshot(html: str) -> bytes:
        page.set_content(html, wait_until="load")
        return page.screenshot(full_page=True, animations="disabled")

    yield screenshot
    context.close()


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_a_rewritten_template_renders_exactly_like_the_original(render, path: Path):
    html = path.read_bytes().decode("utf-8", "replace")
    links = find_html_links(html)
    rewritten = rewrite_html(
        html, {link.index: f"https://t.example.com/t/c/AQIDBAUGBwgJCgsMDQ{link.index}" for link in links}
    )
    assert rewritten != html or not links
    assert render(rewritten) == render(html)
