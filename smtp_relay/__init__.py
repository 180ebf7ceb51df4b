"""HotClicks' SMTP relay: rewrites the links of outgoing mail into tracked links and forwards it.

It stands on the ``hotclicks`` core and never imports Flask.
"""

from .config import RelayConfig
from .handler import RelayHandler
from .processing import MessageProcessor
from .server import RelayController, build_handler

__all__ = ["MessageProcessor", "RelayConfig", "RelayController", "RelayHandler", "build_handler"]
