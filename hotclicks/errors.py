"""The exceptions HotClicks raises; callers catch only what they handle."""


class HotClicksError(Exception):
    """Base class of every error HotClicks raises on purpose."""


class ConfigurationError(HotClicksError):
    """A setting is missing or wrong; the message says how to fix it."""


class InvalidToken(HotClicksError):
    """A tracking token is malformed, forged, altered or signed with an unknown key."""


class MimeError(HotClicksError):
    """A message cannot be parsed well enough to rewrite it safely; forward it unchanged."""
