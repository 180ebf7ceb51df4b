"""HotClicks for Flask: the redirect, open-pixel and opt-out routes and the hot clicks reports.

It stands on the ``hotclicks`` core and never imports the relay.
"""

from hotclicks.senders import mark_message, template_version, tracking_headers

from .extension import DEFAULT_CONFIG, HotClicks, HotClicksState, Preview, get_state
from .senders import headers_for_template

__all__ = [
    "DEFAULT_CONFIG",
    "HotClicks",
    "HotClicksState",
    "Preview",
    "get_state",
    "headers_for_template",
    "mark_message",
    "template_version",
    "tracking_headers",
]
