"""A newcomer's first look: log into the example app and open the hot clicks report in Chromium.

The demo's steps run on the test servers first (real relay, real redirects), so the page shows a
newsletter with realistic clicks; each badge must show the percentage the JSON gives its link.
With HOTCLICKS_UPDATE_SCREENSHOTS=1 the screenshot also replaces the README's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .helpers import play_the_demo

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).parent / "screenshots"
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "demo-hot-clicks.png"


def test_a_newcomer_logs_in_and_sees_each_links_share_of_the_newsletters_clicks(shop, relay, upstream, browser):
    play_the_demo(shop, relay, upstream, subscribers=120, seed=5)
    context = browser.new_context(viewport={"width": 1280, "height": 1500}, timezone_id="Europe/Paris")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(shop.config["LIVE_URL"] + "/hotclicks/deliveries/spring-news/hot-clicks")
        assert "/login" in page.url  # the reports are behind the app's login
        page.fill("input[name=user]", "demo")
        page.fill("input[name=password]", "hotclicks")
        page.click("button[type=submit]")
        page.wait_for_url("**/hotclicks/deliveries/spring-news/hot-clicks")

        frame = page.frame_locator("#hc-content")
        badges = frame.locator(".hc-badge[data-hc-percent]")
        badges.first.wait_for()
        shown = [
            (badge.get_attribute("data-hc-percent"), badge.locator(".hc-tip").inner_text())
            for badge in badges.all()
        ]
        report = page.request.get(
            shop.config["LIVE_URL"] + "/hotclicks/api/deliveries/spring-news/hot-clicks"
        ).json()
        percent_of = {link["url"]: link["percent"] for link in report["links"] if link["part"] == "html"}
        assert report["total_clicks"] > 0
        # The content without a profile has the generic main image, no offer, and the other links.
        assert len(shown) >= 7
        for percent, tip in shown:
            targets = [url for url in percent_of if url in tip]
            assert targets, f"a badge names no tracked target: {tip!r}"
            longest = max(targets, key=len)  # the shop's root is a prefix of every other target
            assert float(percent) == pytest.approx(percent_of[longest], abs=0.01), tip
        assert not errors

        SCREENSHOTS.mkdir(exist_ok=True)
        shot = SCREENSHOTS / "demo-hot-clicks.png"
        page.screenshot(path=str(shot), full_page=False)
        if os.environ.get("HOTCLICKS_UPDATE_SCREENSHOTS") == "1":
            shutil.copyfile(shot, README_SCREENSHOT)
    finally:
        context.close()
