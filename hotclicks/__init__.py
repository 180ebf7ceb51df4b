"""HotClicks' core, shared by the SMTP relay and the Flask extension; it never imports Flask."""

from .errors import ConfigurationError, HotClicksError, InvalidToken, MimeError

__all__ = ["ConfigurationError", "HotClicksError", "InvalidToken", "MimeError"]
