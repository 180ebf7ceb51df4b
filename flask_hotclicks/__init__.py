"""HotClicks for Flask: the redirect, open-pixel and opt-out routes and the hot clicks reports.

It stands on the ``hotclicks`` core and never imports the relay.
"""

from .extension import DEFAULT_CONFIG, HotClicks, HotClicksState

__all__ = ["DEFAULT_CONFIG", "HotClicks", "HotClicksState"]
