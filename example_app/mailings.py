"""The shop's three deliveries, rendered with Jinja and sent with Flask-Mailman through the relay.

- ``spring-news``: a one-off newsletter with dynamic content, as in the hot clicks seed: the main
  image's link depends on the recipient's gender, and an offer is shown only to the over-25s;
- ``weekly-digest``: a recurring delivery, one run a week, its template changed each week;
- ``order-confirmation``: a transactional template, republished once with a changed link.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from flask import render_template
from flask_mailman import EmailMultiAlternatives, Mail

from flask_hotclicks import headers_for_template

from .models import Subscriber, age

mail = Mail()

SHOP = "https://maison-verte.example"

NEWSLETTER = "spring-news"
DIGEST = "weekly-digest"
ORDER = "order-confirmation"

#: The main image of the newsletter, by gender: (link, image alt text).
HERO = {
    "female": (f"{SHOP}/collections/spring-women", "Spring dresses and linen shirts"),
    "male": (f"{SHOP}/collections/spring-men", "Spring jackets and linen shirts"),
    None: (f"{SHOP}/collections/spring", "The spring collection"),
}
#: The special offer is only for recipients older than this.
OFFER_MIN_AGE = 25


def newsletter_context(attributes: Mapping[str, Any], today: dt.date | None = None) -> dict[str, Any]:
    """What a recipient with ``attributes`` sees in the newsletter (also the preview renderer's)."""
    today = today or dt.date.today()
    birth = attributes.get("birth_date")
    birth_date = dt.date.fromisoformat(birth) if isinstance(birth, str) else birth
    years = age(birth_date, today)
    hero_url, hero_alt = HERO.get(attributes.get("gender"), HERO[None])
    return {
        "shop": SHOP,
        "first_name": attributes.get("first_name") or "there",
        "hero_url": hero_url,
        "hero_alt": hero_alt,
        "show_offer": years is not None and years > OFFER_MIN_AGE,
    }


def render(html_template: str, text_template: str, **context: Any) -> tuple[str, str]:
    return render_template(html_template, **context), render_template(text_template, **context)


def _message(
    subscriber: Subscriber, subject: str, html: str, text: str, headers: dict[str, str]
) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        to=[subscriber.email],
        headers={**headers, "X-HotClicks-Recipient": str(subscriber.id)},
    )
    message.attach_alternative(html, "text/html")
    return message


def newsletter_messages(subscribers: Iterable[Subscriber]) -> list[EmailMultiAlternatives]:
    templates = ("mail/newsletter.html", "mail/newsletter.txt")
    headers = headers_for_template(NEWSLETTER, *templates)
    messages = []
    for subscriber in subscribers:
        context = newsletter_context({**subscriber.attributes(), "first_name": subscriber.first_name})
        html, text = render(*templates, **context)
        messages.append(_message(subscriber, "Spring is here at Maison Verte", html, text, headers))
    return messages


def digest_messages(
    subscribers: Iterable[Subscriber], run: str, edition: int
) -> list[EmailMultiAlternatives]:
    """One run of the weekly digest, from template ``edition`` (1 to 3: each week's changes; the
    links are named with ``data-hc-link`` so that a moved link is still the same link)."""
    templates = (f"mail/digest_v{edition}.html", "mail/digest.txt")
    headers = headers_for_template(DIGEST, *templates, type="recurring", run=run)
    return [
        _message(s, f"Your week at Maison Verte ({run})", *render(*templates, shop=SHOP, run=run, first_name=s.first_name), headers)
        for s in subscribers
    ]


def order_messages(orders: Iterable[tuple[Subscriber, str]], edition: int) -> list[EmailMultiAlternatives]:
    """Order confirmations; ``edition`` 2 is the republished template with a changed link."""
    templates = (f"mail/order_v{edition}.html", "mail/order.txt")
    headers = headers_for_template(ORDER, *templates, type="transactional")
    return [
        _message(s, f"Your order {number}", *render(*templates, shop=SHOP, number=number, first_name=s.first_name), headers)
        for s, number in orders
    ]


def send(messages: list[EmailMultiAlternatives]) -> int:
    """Send over one SMTP connection, as a mailing job would; the number sent."""
    with mail.get_connection() as connection:
        return int(connection.send_messages(messages) or 0)
