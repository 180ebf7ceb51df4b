"""The sender's helper with Flask: version a delivery by the source of one of the app's templates."""

from __future__ import annotations

from typing import Any

from flask import current_app

from hotclicks.senders import tracking_headers


def headers_for_template(delivery: str, *templates: str, **options: Any) -> dict[str, str]:
    """The ``X-HotClicks-*`` headers of ``delivery``, versioned by the source of ``templates``
    (names the app's Jinja loader knows, like ``"emails/welcome.html"``).

    Republish a changed template and the next message starts a new execution by itself.
    ``options`` are :func:`hotclicks.senders.tracking_headers`'s (``type``, ``run``, ``recipient``).
    """
    env = current_app.jinja_env
    if not templates:
        raise TypeError("name at least one template")
    sources = []
    for name in templates:
        assert env.loader is not None
        source, _, _ = env.loader.get_source(env, name)
        sources.append(source)
    return tracking_headers(delivery, template_source=sources, **options)
