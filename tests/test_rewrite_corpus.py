"""Real email templates from ../shared/corpus through ``hotclicks.rewrite``.

For each ``*.html`` file, read as bytes: every link is rewritten and the open pixel added; putting
the original values back and taking the pixel out gives the file back byte for byte. The links
found are checked against an independent count: BeautifulSoup (``html.parser``) for ``<a>`` and
``<area>`` in the document, and, since no parser looks inside comments, BeautifulSoup again on
the content of each Outlook conditional comment plus a plain regex count of the VML hrefs there.
(The ``*.eml`` files are the MIME module's: ``tests/test_mime_corpus.py``.)

Reconciling the two counts: BeautifulSoup sees no link inside a conditional comment (a comment to
it), so those come from the comments' content, parsed on its own; that is the only difference.
Mailgun's templates close ``<!--[if mso]>`` with ``<!--<![endif]-->``: to BeautifulSoup the
comment then runs to that ``-->`` as well, so both readings agree on where the region ends.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from bs4 import BeautifulSoup, Comment

from hotclicks.rewrite import find_html_links
from tests.test_rewrite import check_undo

pytestmark = pytest.mark.corpus

from .conftest import CORPUS, require_corpus  # noqa: E402

require_corpus()

HTMLS = sorted(CORPUS.glob("*.html"))
PIXEL_URL = "https://t.example/o/eyJtIjoxMjM0NTY3fQ.signature?x=1&y=2"

# The independent idea of a trackable href, written without the module's code.
_PLACEHOLDERS = ("{{", "{%", "*|", "%%", "[", "<%", "${")
_CONDITIONAL = re.compile(r"^\[if [^\]]*\]>(.*)<!\[endif\]$", re.DOTALL | re.IGNORECASE)
_VML_HREF = re.compile(
    r"<v:\w+\b[^>]*?\shref\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))", re.IGNORECASE
)


def read(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, data.decode("utf-8", errors="surrogateescape")


def expected_url(href: str, base: str | None) -> str | None:
    url = "".join(href.split("\n")).replace("\t", "").replace("\r", "").strip()
    if any(p in url for p in _PLACEHOLDERS) or not url or url.startswith("#"):
        return None
    if base and not re.match(r"[a-z][a-z0-9+.-]*:", url, re.IGNORECASE):
        url = urljoin(base, url)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def links_seen_by_bs4(html: str) -> tuple[list[str], list[str]]:
    """Trackable targets outside and inside conditional comments, as BeautifulSoup reads them."""
    soup = BeautifulSoup(html, "html.parser")
    base_tag = soup.find("base", href=True)
    base = str(base_tag["href"]) if base_tag else None
    outside = [
        url
        for tag in soup.find_all(["a", "area"], href=True)
        if "data-hc-notrack" not in tag.attrs
        and (url := expected_url(str(tag["href"]), base)) is not None
    ]
    inside = []
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        match = _CONDITIONAL.match(str(comment))
        if match is None:
            continue  # an ordinary comment, or the downlevel-revealed "[if !mso]><!"
        content = BeautifulSoup(match.group(1), "html.parser")
        for tag in content.find_all(href=True):
            if (tag.name in ("a", "area") or ":" in tag.name) and "data-hc-notrack" not in tag.attrs:
                url = expected_url(str(tag["href"]), base)
                if url is not None:
                    inside.append(url)
    return outside, inside


def test_the_corpus_has_html_templates() -> None:
    assert len(HTMLS) >= 20


@pytest.mark.parametrize("path", HTMLS, ids=[p.name for p in HTMLS])
def test_rewriting_every_link_is_exactly_reversible(path: Path) -> None:
    data, html = read(path)
    assert html.encode("utf-8", errors="surrogateescape") == data
    # check_undo: rewrite all links and add the pixel, rescan, put the values back, drop the
    # pixel: the decoded file again, so its bytes again.
    out = check_undo(html, html, pixel_url=PIXEL_URL)
    assert out.count(PIXEL_URL.replace("&", "&amp;")) == 1
    if re.search(r"</body", html, re.IGNORECASE):
        # The pixel sits right before the last </body> (no file here hides one in a comment).
        assert re.search(r"/>\s*</body\s*>\s*</html>\s*$", out, re.IGNORECASE)


@pytest.mark.parametrize("path", HTMLS, ids=[p.name for p in HTMLS])
def test_every_trackable_link_is_found(path: Path) -> None:
    _, html = read(path)
    links = find_html_links(html)
    outside, inside = links_seen_by_bs4(html)
    # BeautifulSoup cannot see inside conditional comments: those links come from parsing each
    # comment's content on its own, and the VML ones are counted a third way by a plain regex.
    ours_outside = sorted(link.url for link in links if not link.conditional)
    ours_inside = sorted(link.url for link in links if link.conditional)
    assert ours_outside == sorted(outside)
    assert ours_inside == sorted(inside)
    vml_by_regex = 0
    for comment in re.findall(r"<!--\[if [^\]]*\]>(.*?)<!\[endif\]-->", html, re.DOTALL | re.I):
        for values in _VML_HREF.findall(comment):
            if expected_url("".join(values), None) is not None:
                vml_by_regex += 1
    assert sum(1 for link in links if ":" in link.tag) == vml_by_regex
    assert len(links) == len(outside) + len(inside)


def test_the_corpus_buttons_count_once() -> None:
    """Each bulletproof VML button of the corpus shares its key with its <a> twin."""
    twins = 0
    for path in HTMLS:
        links = find_html_links(read(path)[1])
        keys = [link.key for link in links]
        for link in links:
            if ":" in link.tag:
                shared = [other for other in links if other.key == link.key and other is not link]
                assert len(shared) <= 1
                twins += len(shared)
        assert len(set(keys)) >= len(keys) - sum(1 for link in links if link.conditional)
    assert twins >= 1
