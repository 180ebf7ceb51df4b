"""The device family of a click, read from real user agents (``hotclicks.devices``)."""

from __future__ import annotations

import pytest

from hotclicks.devices import DESKTOP, FAMILIES, MOBILE, TABLET, UNKNOWN, device_family

AGENTS = [
    # Phones
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.4 Mobile/15E148 Safari/604.1", MOBILE),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Mobile Safari/537.36", MOBILE),
    ("Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36", MOBILE),
    ("Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", MOBILE),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
     MOBILE),  # the Gmail app's web view
    # Tablets
    ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.4 Mobile/15E148 Safari/604.1", TABLET),
    ("Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36", TABLET),
    ("Mozilla/5.0 (Linux; Android 9; KFMAWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/124.2.1 "
     "like Chrome/124.0.6367.82 Safari/537.36", TABLET),
    # Desktops
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51", DESKTOP),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.4.1 Safari/605.1.15", DESKTOP),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", DESKTOP),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.10.1", DESKTOP),
    ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36", DESKTOP),
    # Machines, and agents that name no platform
    ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.6367.201 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
     UNKNOWN),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", UNKNOWN),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "HeadlessChrome/124.0.0.0 Safari/537.36", UNKNOWN),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Microsoft Office Existence Discovery", UNKNOWN),
    ("Mimecast-LinkScanner/2.0", UNKNOWN),
    ("python-requests/2.31.0", UNKNOWN),
    ("curl/8.5.0", UNKNOWN),
    ("Mozilla/5.0", UNKNOWN),  # Apple Mail Privacy Protection's image proxy
    ("", UNKNOWN),
    (None, UNKNOWN),
]


@pytest.mark.parametrize(("agent", "family"), AGENTS)
def test_the_device_family_of_real_user_agents(agent, family):
    assert device_family(agent) == family


def test_every_answer_is_a_family_and_short_enough_for_its_column():
    assert {device_family(agent) for agent, _ in AGENTS} == set(FAMILIES)
    assert max(len(f) for f in FAMILIES) <= 10
