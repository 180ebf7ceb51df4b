"""The hot clicks and tracking reports in a real browser: Debian's Chromium driven by Playwright.

The Flask app runs on a free port of 127.0.0.1 (werkzeug's server in a thread); one browser serves
the whole module. Screenshots land in tests/screenshots/ (git-ignored); the hot clicks page
without a profile also replaces docs/hot-clicks.png when HOTCLICKS_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask

from .helpers import newsletter, tracked_hrefs
from .test_end_to_end import send
from .test_reports import seed

SCREENSHOTS = Path(__file__).parent / "screenshots"
DOCS_SCREENSHOT = Path(__file__).parent.parent / "docs" / "hot-clicks.png"

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # pragma: no cover - the browser fixture skips these tests then
    pass


class LiveServer:
    def __init__(self, app: Flask) -> None:
        from werkzeug.serving import make_server

        self.beacons: list[str] = []
        app.add_url_rule("/beacon", "beacon", self._beacon)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _beacon(self) -> str:
        self.beacons.append("hit")
        return "seen"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()


@pytest.fixture
def live(app: Flask) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(locale="en-GB", timezone_id="Europe/Paris", viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("console", lambda m: _console(page, m))
    page.on("pageerror", lambda e: page.errors.append(f"page: {e}"))  # type: ignore[attr-defined]
    yield page
    context.close()


#: Once a frame locator has been used, Playwright's own injected script reacts to mouse events in
#: the frame, and Chromium refuses it there since the frame is sandboxed without scripts. A minimal
#: control page (a sandboxed frame with static text) shows the same message under Playwright and
#: none without a frame locator: it is the test harness, not the report. Only that message of the
#: email frame is ignored; whether a script of the email runs is tested by its effects.
_HARNESS_IN_SANDBOX = "Blocked script execution in '"


def _console(page: Page, message) -> None:
    if message.type != "error":
        return
    if message.text.startswith(_HARNESS_IN_SANDBOX) and "/hot-clicks/frame" in message.text:
        return
    page.errors.append(f"console: {message.text}")  # type: ignore[attr-defined]


def _badges(page: Page) -> list[str]:
    frame = page.frame_locator("#hc-content")
    frame.locator("body").wait_for()
    return [t.split("\n")[0].strip() for t in frame.locator(".hc-badge").all_inner_texts()]


def _shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_badges_show_each_links_share_and_hover_or_focus_tells_counts_and_target(live, page, sessions):
    seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks")
    assert _badges(page) == ["30%", "25%", "20%", "not tracked", "10%"]
    shot = _shot(page, "hot-clicks-html.png")
    if os.environ.get("HOTCLICKS_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    expect(page.locator("#hc-legend")).to_contain_text("100% = 20 clicks by people")
    expect(page.locator("#hc-legend")).to_contain_text("across all variants")
    frame = page.frame_locator("#hc-content")
    first = frame.locator(".hc-badge").first
    first.hover()
    expect(first.locator(".hc-tip")).to_be_visible()
    expect(first.locator(".hc-tip")).to_have_text("6 clicks, 2 unique clickers. https://shop.example/sale")
    frame.locator(".hc-badge").nth(1).focus()  # keyboard focus shows the same
    expect(frame.locator(".hc-badge").nth(1).locator(".hc-tip")).to_contain_text("5 clicks, 3 unique clickers")
    assert page.errors == []  # type: ignore[attr-defined]


def test_changing_execution_changes_the_figures(live, page, sessions):
    seeded = seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks")
    summary = page.locator("#change-execution summary")
    summary.focus()
    page.keyboard.press("Enter")  # usable with a keyboard
    expect(page.locator("#change-execution table")).to_be_visible()
    expect(page.locator("#change-execution")).to_contain_text("never added up across executions")
    page.locator("#change-execution a.hc-execution", has_text=f"#{seeded.first}").click()
    expect(page.locator("#execution")).to_contain_text(f"#{seeded.first}")
    assert _badges(page) == ["25%", "0%", "75%", "not tracked", "0%"]
    expect(page.locator("#hc-legend")).to_contain_text("100% = 4 clicks")
    # the first execution started on 2 March 2026 at 09:00 UTC: 10:00 in Paris
    expect(page.locator("#execution time")).to_have_text("2 Mar 2026, 10:00")
    assert page.errors == []  # type: ignore[attr-defined]


def test_loading_a_profile_changes_the_content_and_keeps_the_percentages_base(live, page, sessions):
    seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks")
    page.locator("#load-profile summary").click()
    page.locator("#load-profile a.hc-profile", has_text="Marc (man, 40)").click()
    expect(page.locator("#profile")).to_contain_text("Marc (man, 40)")
    frame = page.frame_locator("#hc-content")
    expect(frame.locator("img[alt=\"Men's collection\"]")).to_have_count(1)
    # Marc's variant: the men's hero instead of the women's, the same base (20 clicks)
    assert _badges(page) == ["30%", "15%", "20%", "not tracked", "10%"]
    expect(page.locator("#hc-legend")).to_contain_text("100% = 20 clicks")
    expect(page.locator("#variants")).to_contain_text("46.15%")
    _shot(page, "hot-clicks-html-profile.png")
    page.locator("#view-text").click()
    expect(page.locator("#hc-text")).to_contain_text("Spring is here")
    page.wait_for_load_state("load")
    assert [b.split("\n")[0] for b in page.locator("#hc-text .hc-badge").all_inner_texts()] == ["0%", "0%"]
    _shot(page, "hot-clicks-text-profile.png")
    page.locator("#profile a", has_text="unload").click()
    expect(page.locator("#profile")).to_contain_text("none")
    _shot(page, "hot-clicks-text.png")
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_script_planted_in_an_email_does_not_run(live, page, sessions):
    seeded = seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks?profile={seeded.marc}")
    frame = page.frame_locator("#hc-content")
    expect(frame.locator("a", has_text="javascript")).to_have_count(1)
    frame.locator("a", has_text="javascript").click()
    page.wait_for_timeout(300)
    assert page.evaluate("window.hcPwned") is None
    assert page.title() != "pwned"
    assert live.beacons == []
    # and the frame is sandboxed without scripts, under its own policy
    assert page.locator("#hc-content").get_attribute("sandbox") == "allow-same-origin"
    response = page.request.get(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks/frame?profile={seeded.marc}")
    assert response.headers["content-security-policy"].startswith("sandbox allow-same-origin;")


def test_toggles_switch_to_machine_clicks_and_unique_clickers(live, page, sessions):
    seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks")
    page.locator("#toggle-machine").click()
    expect(page.locator("#toggle-machine")).to_have_attribute("aria-pressed", "true")
    assert _badges(page)[2] == "33.33%"  # the blog with the scanner's 4 clicks: 8 of 24
    page.locator("#toggle-machine").click()
    page.locator("#toggle-unique").click()
    assert _badges(page)[1] == "37.5%"  # the women's hero: 3 of 8 unique clickers
    expect(page.locator("#hc-legend")).to_contain_text("100% = 8 unique clickers")
    assert page.errors == []  # type: ignore[attr-defined]


def test_tracking_pages_have_no_console_errors(live, page, sessions):
    seed(sessions)
    page.goto(f"{live.url}/hotclicks/")
    expect(page.locator("#deliveries")).to_contain_text("spring-news")
    page.locator("#deliveries a", has_text="spring-news").click()
    expect(page.locator("#urls")).to_contain_text("Shop the spring sale")
    expect(page.locator(".hc-chart svg rect").first).to_be_attached()
    page.fill("#q", "r1")
    page.keyboard.press("Enter")
    expect(page.locator("#messages tbody tr")).to_have_count(3)  # r1, r10, r11
    page.locator("#messages a", has_text="r1@example.org").click()
    expect(page.locator("#clicks")).to_contain_text("https://shop.example/men")
    _shot(page, "recipient.png")
    page.goto(f"{live.url}/hotclicks/recipients?q=r0")
    expect(page.locator("#recipients")).to_contain_text("r0@example.org")
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_newsletter_sent_through_the_relay_shows_its_badges(relay, upstream, client, live, page):
    send(relay, newsletter(), ["ann@example.org", "bob@example.org"])
    by_recipient = {m.rcpt_tos[0]: tracked_hrefs(m.data, part="html") for m in upstream.messages}
    for address, index in [("ann@example.org", 0), ("bob@example.org", 0), ("ann@example.org", 2),
                           ("bob@example.org", 0)]:
        assert client.get(urlsplit(by_recipient[address][index]).path,
                          headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}).status_code == 302
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks")
    assert _badges(page) == ["75%", "0%", "25%"]
    page.locator("#view-text").click()
    page.wait_for_url("**view=text**")
    page.wait_for_load_state("load")  # the badges' style sheet too: until then the tooltip shows
    assert [b.split("\n")[0] for b in page.locator("#hc-text .hc-badge").all_inner_texts()] == ["0%"]
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_delivery_page_shows_the_machines_share_and_why(relay, upstream, client, live, page):
    """A Safe Links check from Microsoft's network and the person's own click after it; Apple's
    prefetch and a Gmail reader's open: the page says what machines made, and why."""
    send(relay, newsletter(), ["ann@example.org", "bob@example.org"])
    copies = {m.rcpt_tos[0]: m.data for m in upstream.messages}
    ann = tracked_hrefs(copies["ann@example.org"], part="html")
    browser_agent = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}
    client.get(urlsplit(ann[0]).path, headers=browser_agent, environ_base={"REMOTE_ADDR": "40.107.3.9"})
    client.get(urlsplit(ann[0]).path, headers=browser_agent, environ_base={"REMOTE_ADDR": "198.51.100.20"})
    pixel = {a: re.search(rb"/t/o/[A-Za-z0-9_-]+", d).group().decode() for a, d in copies.items()}  # type: ignore[union-attr]
    client.get(pixel["bob@example.org"], headers={"User-Agent": "Mozilla/5.0"})
    client.get(pixel["ann@example.org"], headers={"User-Agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"})

    page.goto(f"{live.url}/hotclicks/deliveries/spring-news")
    expect(page.locator("#machine-summary")).to_contain_text("50.0% of the clicks (1 of 2)")
    expect(page.locator("#machine-summary")).to_contain_text("50.0% of the opens (1 of 2)")
    rows = page.locator("#machine-reasons tbody tr").all_inner_texts()
    assert [r.split("\t")[:3] for r in rows] == [["network:microsoft-eop", "click", "1"], ["apple-mpp", "open", "1"]]
    expect(page.locator("#machine-mpp")).to_contain_text("whether those recipients opened cannot be known")
    expect(page.locator("#machine-proxy")).to_contain_text("1 people's open came through Gmail's or Yahoo's image proxy")
    _shot(page, "delivery-machines.png")
    assert page.errors == []  # type: ignore[attr-defined]


DOCS = Path(__file__).parent.parent / "docs"


def test_comparing_two_executions_shows_each_share_and_its_change(live, page, sessions):
    seeded = seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks")
    page.locator("#compare-with summary").click()
    page.locator("#compare-with a.hc-compare", has_text=f"#{seeded.first}").click()
    expect(page.locator("#hc-comparing")).to_contain_text(f"Compared with execution #{seeded.first}")
    assert _badges(page) == ["30% \u25b25", "25% \u25b225", "20% \u25bc55", "not tracked", "10% \u25b210"]
    expect(page.locator("#hc-changes")).to_contain_text("shop.example/men")
    expect(page.locator("#hc-top li").first).to_contain_text("\u25b25 points")
    frame = page.frame_locator("#hc-content")
    frame.locator(".hc-badge").nth(2).focus()
    expect(frame.locator(".hc-badge").nth(2).locator(".hc-tip")).to_contain_text("75% in the compared execution")
    _shot(page, "hot-clicks-compare.png")
    if os.environ.get("HOTCLICKS_UPDATE_SCREENSHOTS") == "1":  # the docs' copy: the first screen only
        page.screenshot(path=str(DOCS / "hot-clicks-compare.png"), scale="css", type="png")
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_time_filter_shows_the_shares_within_the_first_hours(live, page, sessions):
    seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks")
    page.locator("#hc-within a[data-hc-within='6h']").click()
    expect(page.locator("#hc-within a[data-hc-within='6h']")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#hc-window")).to_contain_text("counts whole")
    expect(page.locator("#hc-legend")).to_contain_text("100% = 18 clicks")
    assert _badges(page) == ["33.33%", "27.78%", "22.22%", "not tracked", "0%"]
    page.locator("#hc-within a[data-hc-within='1h']").click()
    expect(page.locator("#hc-legend")).to_contain_text("100% = 0 clicks")
    page.locator("#toggle-counts").click()  # counts instead of shares, the window kept
    expect(page.locator("#hc-within a[data-hc-within='1h']")).to_have_attribute("aria-pressed", "true")
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_device_filter_shows_the_shares_of_one_device_familys_clicks(live, page, sessions):
    from .test_reports_devices import seed_devices

    seed_devices(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news")
    page.locator("#devices a", has_text="mobile").click()
    expect(page.locator("#hc-device a[data-hc-device='mobile']")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#hc-device-note")).to_contain_text("mobile device")
    expect(page.locator("#hc-legend")).to_contain_text("100% = 4 clicks")
    assert _badges(page) == ["75%", "0%", "25%", "not tracked", "0%"]
    page.locator("#hc-device a[data-hc-device='tablet']").click()
    expect(page.locator("#hc-legend")).to_contain_text("100% = 1 clicks")
    page.locator("#toggle-counts").click()  # counts instead of shares, the family kept
    expect(page.locator("#hc-device a[data-hc-device='tablet']")).to_have_attribute("aria-pressed", "true")
    page.locator("#hc-within a[data-hc-within='6h']").click()  # a time window leaves the family
    expect(page.locator("#hc-device a", has_text="any device")).to_have_attribute("aria-pressed", "true")
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_message_is_shown_at_its_full_height_without_an_inner_scroll_bar(live, page, sessions):
    seeded = seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news/hot-clicks?profile={seeded.marc}")
    frame = page.locator("#hc-content")
    expect(frame).to_have_class("hc-frame hc-fitted")
    sizes = frame.evaluate(
        "f => { const d = f.contentDocument.documentElement;"
        " return [f.clientHeight, d.scrollHeight, d.clientHeight, f.contentWindow.innerHeight]; }")
    frame_height, content_height, viewport, inner = sizes
    assert content_height <= viewport and content_height <= inner  # nothing to scroll inside
    assert content_height == viewport == frame_height  # fitted to the message, neither more nor less
    # taller content (the images shown, a narrow window) grows the frame too
    page.set_viewport_size({"width": 420, "height": 900})
    page.wait_for_function(
        "() => { const f = document.querySelector('#hc-content');"
        " return f.contentDocument.documentElement.scrollHeight <= f.clientHeight; }")
    assert page.evaluate("window.hcPwned") is None
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_delivery_page_draws_the_cumulative_curve(live, page, sessions):
    seeded = seed(sessions)
    page.goto(f"{live.url}/hotclicks/deliveries/spring-news?execution={seeded.latest}")
    expect(page.locator("#hc-curve svg polyline")).to_be_attached()
    expect(page.locator("#hc-time-to")).to_contain_text("Half the clicks came within 3 h")
    if os.environ.get("HOTCLICKS_UPDATE_SCREENSHOTS") == "1":
        page.locator("#hc-curve").screenshot(path=str(DOCS / "click-curve.png"))
    assert page.errors == []  # type: ignore[attr-defined]
