"""Where people click from: a user agent's device family, as a plain function.

The click route reads the family at click time and stores it on the click (a few characters),
so the reports can tell phones from desktops even when user agents are not stored
(``HOTCLICKS_STORE_USER_AGENT = False``). No I/O here; the parse is cached per user agent,
because a few agents make most of the traffic and the click path should stay lean.
"""

from __future__ import annotations

import functools
import re

from . import bots

__all__ = ["DESKTOP", "FAMILIES", "MOBILE", "TABLET", "UNKNOWN", "device_family"]

DESKTOP = "desktop"
MOBILE = "mobile"
TABLET = "tablet"
#: No user agent, a machine's, or one that names no platform (Apple's image proxy: "Mozilla/5.0").
UNKNOWN = "unknown"
#: Every family, in the order the reports list them.
FAMILIES = (DESKTOP, MOBILE, TABLET, UNKNOWN)

#: User agents distinct enough to remember their family.
_CACHE_SIZE = 4096

#: Machines whose agent may still name a platform (Googlebot claims an Android phone).
_MACHINE = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|headless|python|curl/|wget/|java/|okhttp|go-http|libwww|httpclient"
    r"|facebookexternalhit|preview|scanner|" + "|".join(f"(?:{pattern})" for _, pattern in bots.KNOWN_AGENTS),
    re.I,
)
#: Checked in this order: an Android tablet says "Android" without "Mobile"; an iPad says "iPad"
#: (iPadOS's Safari says "Macintosh" by default and cannot be told from a Mac: desktop).
_TABLET = re.compile(r"ipad|tablet|kindle|silk/|playbook|nexus (?:7|9|10)\b|sm-t\d", re.I)
_MOBILE = re.compile(r"iphone|ipod|windows phone|iemobile|blackberry|bb10|opera mini|mobile|\bphone\b", re.I)
_ANDROID = re.compile(r"android", re.I)
_DESKTOP = re.compile(r"windows nt|macintosh|mac os x|x11|linux|cros|freebsd|openbsd", re.I)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def device_family(user_agent: str | None) -> str:
    """The device family ``user_agent`` belongs to: one of :data:`FAMILIES`."""
    if not user_agent or _MACHINE.search(user_agent):
        return UNKNOWN
    if _TABLET.search(user_agent):
        return TABLET
    if _MOBILE.search(user_agent):
        return MOBILE
    if _ANDROID.search(user_agent):  # Android without "Mobile": a tablet, as Google advises
        return TABLET
    if _DESKTOP.search(user_agent):
        return DESKTOP
    return UNKNOWN
