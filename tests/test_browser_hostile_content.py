"""Hostile email content in the reports, in a real browser (Debian's Chromium through Playwright).

A delivery whose HTML carries scripts, inline event handlers, ``javascript:`` links, a meta
refresh, a ``<base href>``, a form, a frame, CSS that covers the page and link labels with HTML in
them goes through the real relay; the hot clicks page, its text view and the delivery page are
then opened. Every attempt targets the report: set a marker on ``window.top``/``parent``, write
``document.cookie``, change the title, or call an endpoint of the report's own server, which
counts its hits. Nothing may run, nothing may load, the report's controls stay on top and
clickable, and labels show as text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from flask import Flask

from .test_browser_reports import LiveServer, page  # noqa: F401  (the page fixture)
from .test_end_to_end import send

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import Page, expect
except ImportError:  # pragma: no cover - the browser fixture skips these tests then
    pass

DELIVERY = "hostile-news"
#: The marker every script tries to set somewhere the report would see it.
MARKER = "hcPwned"


def hostile_html(base: str) -> str:
    """``base`` is the report server's address: every attempt calls ``{base}/hostile/<what>``."""
    hit = f"{base}/hostile"
    steal = (
        f"try{{top.{MARKER}='{{w}}'}}catch(e){{}}try{{parent.{MARKER}='{{w}}'}}catch(e){{}}"
        f"try{{top.document.title='pwned'}}catch(e){{}}try{{document.cookie='{MARKER}={{w}}'}}catch(e){{}}"
        f"fetch('{hit}/{{w}}').catch(function(){{}});"
    )

    def js(what: str) -> str:
        return steal.replace("{w}", what)

    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8">
<base href="{hit}/base/">
<meta http-equiv="refresh" content="0;url={hit}/meta-refresh">
<link rel="stylesheet" href="{hit}/stylesheet">
<style>
@import url("{hit}/css-import");
.cover{{position:fixed;top:0;left:0;width:100vw;height:100vh;z-index:2147483647;background:rgba(255,0,0,.5)}}
body{{background:url("{hit}/css-background")}}
</style>
<script>{js("script")}</script>
</head>
<body onload="{js('onload')}">
<div class="cover" onmouseover="{js('onmouseover')}">covering everything</div>
<div style="position:fixed;inset:-100px;z-index:99999999;transform:scale(5)">a second cover</div>
<p><a href="https://shop.example/sale" onclick="{js('onclick')}">Shop the sale
<img src="x" onerror="{js('onerror')}" alt="sale"></a></p>
<p><a href="javascript:{js('javascript-link')}">a javascript link</a>
<a href="  JaVaScRiPt:{js('javascript-spaced')}">another</a></p>
<p><a href="https://shop.example/label">&lt;img src=x onerror=fetch('{hit}/label-entity')&gt;</a></p>
<p><a href="https://shop.example/raw"><b>bold</b> <img src=x onerror="{js('label-raw')}"> raw tags</a></p>
<p><a href="https://shop.example/formula">=HYPERLINK("https://evil.example","x")</a>
<a href="https://shop.example/sum">@SUM(1+1)*cmd|' /C calc'!A0</a></p>
<p><a href="https://shop.example/q?a=&quot;&gt;&lt;script&gt;{js('href-break')}&lt;/script&gt;">quoted target</a></p>
<form id="steal" action="{hit}/form" method="post"><input name="q" value="x"><button id="go">Go</button></form>
<iframe src="{hit}/iframe" srcdoc="&lt;script&gt;{js('srcdoc')}&lt;/script&gt;"></iframe>
<object data="{hit}/object"></object><embed src="{hit}/embed">
<svg onload="{js('svg')}"><a href="javascript:{js('svg-link')}"><text y="20">svg link</text></a></svg>
<img src="{hit}/image">
<noscript><img src="{hit}/noscript"></noscript>
</body></html>"""


def hostile_message(base: str) -> bytes:
    text = f"""From: Shop <news@shop.example>
To: subscribers@shop.example
Subject: Hostile news
Message-ID: <hostile-1@shop.example>
MIME-Version: 1.0
X-HotClicks-Delivery: {DELIVERY}
Content-Type: multipart/alternative; boundary="==b1=="

--==b1==
Content-Type: text/plain; charset="utf-8"

<script>top.{MARKER}='text'</script> Shop: https://shop.example/text?<b>x</b>

--==b1==
Content-Type: text/html; charset="utf-8"

{hostile_html(base)}

--==b1==--
"""
    return text.replace("\n", "\r\n").encode()


class HostileServer(LiveServer):
    """The report's server, with an endpoint that counts what reaches it."""

    def __init__(self, app: Flask) -> None:
        self.hits: list[str] = []

        def hostile(what: str) -> str:
            self.hits.append(what)
            return ""

        app.add_url_rule("/hostile/<path:what>", "hostile", hostile, methods=["GET", "POST"])
        super().__init__(app)


@pytest.fixture
def served(app: Flask, relay) -> Iterator[HostileServer]:
    server = HostileServer(app)
    send(relay, hostile_message(server.url), recipients=["ann@example.org", "bob@example.org"])
    yield server
    server.stop()


def assert_nothing_ran(page: Page, served: HostileServer) -> None:
    page.wait_for_timeout(500)  # room for a refresh, an onload or a fetch to happen
    assert page.evaluate(f"window.{MARKER}") is None
    assert page.title() != "pwned"
    assert MARKER not in page.evaluate("document.cookie")
    assert not [c for c in page.context.cookies() if MARKER in c["name"]]
    assert served.hits == [], f"the report's server was reached by the email: {served.hits}"


def assert_on_top_and_clickable(page: Page, selector: str) -> None:
    """The control is what a click at its centre reaches, and Playwright may click it."""
    control = page.locator(selector)
    control.scroll_into_view_if_needed()
    box = control.bounding_box()
    assert box is not None, selector
    reached = page.evaluate(
        "([x, y, sel]) => { const e = document.elementFromPoint(x, y); const c = document.querySelector(sel);"
        " return !!e && (e === c || c.contains(e)); }",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, selector],
    )
    assert reached, f"{selector} is covered"
    control.click(trial=True, timeout=5000)  # actionability: visible, stable, receives events


def test_nothing_in_a_hostile_email_runs_loads_or_covers_the_hot_clicks_page(served, page):
    url = f"{served.url}/hotclicks/deliveries/{DELIVERY}/hot-clicks"
    page.goto(url)
    frame_element = page.locator("#hc-content")
    expect(frame_element).to_have_attribute("sandbox", "allow-same-origin")  # never allow-scripts
    frame = page.frame_locator("#hc-content")
    frame.locator("body").wait_for()
    assert_nothing_ran(page, served)

    # The email's own controls do nothing when used.
    frame.locator("a", has_text="a javascript link").click(force=True)
    frame.locator("a", has_text="Shop the sale").click(force=True, modifiers=[])
    frame.locator("#go").click(force=True)
    assert_nothing_ran(page, served)
    expect(page).to_have_url(url)  # no navigation of the report, by a link, a form or a refresh

    # Nothing leaves the frame's box, and the report's controls stay on top and clickable.
    for selector in ("#view-html", "#view-text", "#toggle-machine", "#toggle-unique", "#toggle-images",
                     "#change-execution summary", "#load-profile summary", "#links"):
        assert_on_top_and_clickable(page, selector)
    frame_box = frame_element.bounding_box()
    view = page.viewport_size
    assert frame_box is not None and view is not None
    assert frame_box["width"] <= view["width"]

    # The labels with HTML in them are text in the links table, not markup.
    links = page.locator("#links")
    expect(links).to_contain_text("<img src=x onerror=fetch(")
    expect(links.locator("img")).to_have_count(0)
    expect(links.locator("b")).to_have_count(0)
    assert_nothing_ran(page, served)


def test_the_frame_is_served_under_a_sandbox_policy_with_its_scripts_and_loads_removed(served, page):
    frame_url = f"{served.url}/hotclicks/deliveries/{DELIVERY}/hot-clicks/frame"
    response = page.request.get(frame_url)
    policy = response.headers["content-security-policy"]
    directives = {d.strip().split(" ")[0]: d.strip() for d in policy.split(";")}
    assert directives["sandbox"] == "sandbox allow-same-origin"  # no allow-scripts, no forms
    assert directives["default-src"] == "default-src 'none'"
    assert directives["script-src"] == "script-src 'none'"
    assert directives["form-action"] == "form-action 'none'"
    assert directives["base-uri"] == "base-uri 'none'"
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(response.text(), "html.parser")
    # (a <link> stylesheet stays, refused by the policy: style-src allows inline styles only)
    assert soup.find_all(["script", "iframe", "frame", "object", "embed", "base", "noscript"]) == []
    assert [m for m in soup.find_all("meta") if m.get("http-equiv", "").lower() == "refresh"] == []
    for tag in soup.find_all(True):
        for name, value in tag.attrs.items():
            assert not name.lower().startswith("on") and name.lower() != "srcdoc", (tag.name, name)
            assert "javascript:" not in str(value).lower().replace(" ", ""), (tag.name, name, value)
    assert "<img src=x onerror=fetch(" in soup.get_text()  # the label, as text

    # Opened on its own, outside the report's frame: the policy alone still keeps it inert.
    page.goto(frame_url)
    page.wait_for_timeout(500)
    assert served.hits == []
    # ...also with remote images shown: only images may load then, and nothing runs.
    page.goto(frame_url + "?images=1")
    page.wait_for_timeout(500)
    assert set(served.hits) <= {"image", "css-background"}, served.hits
    assert page.evaluate(f"window.{MARKER}") is None


def test_the_text_view_and_the_delivery_page_show_hostile_text_as_text(served, page):
    page.goto(f"{served.url}/hotclicks/deliveries/{DELIVERY}/hot-clicks?view=text")
    expect(page.locator("#hc-text")).to_contain_text(f"<script>top.{MARKER}='text'</script>")
    expect(page.locator("#hc-text script")).to_have_count(0)
    assert_nothing_ran(page, served)
    page.goto(f"{served.url}/hotclicks/deliveries/{DELIVERY}")
    expect(page.locator("#urls")).to_contain_text("<img src=x onerror=fetch(")
    expect(page.locator("#urls img")).to_have_count(0)
    assert_nothing_ran(page, served)
    assert page.errors == []  # type: ignore[attr-defined]


def test_csv_exports_do_not_hand_a_spreadsheet_a_formula(served, app):
    """A label is the sender's text: in a CSV opened by a spreadsheet, ``=...`` would be a formula."""
    client = app.test_client()
    labels = []
    for name in ("hot-clicks.csv", "urls.csv"):
        response = client.get(f"/hotclicks/deliveries/{DELIVERY}/{name}")
        assert response.status_code == 200, name
        for row in csv.reader(io.StringIO(response.get_data(as_text=True))):
            labels += [cell for cell in row if "HYPERLINK" in cell or "SUM(" in cell]
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    assert labels, "the formula labels are exported (as text)"
