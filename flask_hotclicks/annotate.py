"""The hot clicks as the viewer sees them: heat scale, badges, and the email made safe to show.

Presentation only: the figures come from :mod:`hotclicks.heat` through :mod:`hotclicks.db.stats`.
The badges' style and markup are defined here once, for the email's sandboxed frame (inlined)
and for the report page (served by the blueprint as ``badges.css``).
"""

from __future__ import annotations

import functools
import html as _html
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from markupsafe import Markup

from hotclicks.heat import LinkFigure
from hotclicks.rewrite import Link, find_html_links, find_text_links, rewrite_html

__all__ = [
    "BADGE_CSS",
    "HEAT_COLOURS",
    "HEAT_THRESHOLDS",
    "Badge",
    "TextPiece",
    "annotate_html",
    "annotate_text",
    "badge_html",
    "heat_level",
    "html_badges",
]

#: Heat scale: a badge's level is the number of thresholds its percentage reaches (0 to 9).
HEAT_THRESHOLDS = (0.5, 2.5, 5, 10, 15, 20, 30, 45, 60)
#: Colours of the heat levels, cold to hot.
HEAT_COLOURS = ("#dbe9f6", "#c6e2ef", "#c8ecc2", "#e7f1a6", "#fde68a", "#fcc97a",
                "#f9a66c", "#f37f5e", "#e4534f", "#c2243e")


def heat_level(percent: float) -> int:
    """The heat level (0 to 9) of a badge showing ``percent``."""
    return sum(1 for threshold in HEAT_THRESHOLDS if percent >= threshold)


#: The badges' style, in the email's sandboxed frame and on the report page (no script: hover and
#: focus are CSS).
BADGE_CSS = """
.hc-badge{position:relative;display:inline-block;margin:0 4px 0 0;padding:1px 6px;border-radius:9px;
font:bold 12px/16px system-ui,sans-serif;color:#111;border:1px solid #444;vertical-align:middle;
cursor:default;text-decoration:none;white-space:nowrap;z-index:10}
.hc-badge:focus{outline:3px solid #1a5fb4;outline-offset:1px}
.hc-untracked{background:#eee;color:#555;border-style:dashed;font-weight:normal}
.hc-tip{display:none;position:absolute;left:0;top:100%;margin-top:4px;padding:6px 8px;background:#222;
color:#fff;font:12px/16px system-ui,sans-serif;border-radius:4px;white-space:normal;width:max-content;
max-width:320px;overflow-wrap:anywhere;z-index:20;text-align:left}
.hc-badge:hover .hc-tip,.hc-badge:focus .hc-tip{display:block}
""" + "".join(f".hc-heat-{i}{{background:{c}}}" for i, c in enumerate(HEAT_COLOURS)) + ".hc-heat-9,.hc-heat-8{color:#fff}"


@dataclass(frozen=True)
class Badge:
    """What one link of the content shows: its figure, or None when it is not tracked."""

    index: int
    key: str
    url: str
    figure: LinkFigure | None

    def text(self, measure: str, counts: bool = False) -> str:
        """The badge's label: the share (or, with ``counts``, the count) and, when two
        executions are compared, the change in points (an arrow) or "new"."""
        f = self.figure
        if f is None:
            return "not tracked"
        if counts:
            return str(f.shown_clickers if measure == "unique" else f.shown_clicks)
        return f"{f.percent:g}%{_delta(f)}"

    def tip(self, measure: str, counts: bool = False) -> str:
        if self.figure is None:
            return f"Not tracked in this execution. {self.url}"
        f = self.figure
        share = f"{f.percent:g}%{_delta(f)}: " if counts else ""
        was = ""
        if f.compare_percent is not None:
            was = f"{f.compare_percent:g}% in the compared execution. "
        elif f.compared:
            was = "New: no match in the compared execution. "
        return (f"{share}{f.shown_clicks} click{'s' if f.shown_clicks != 1 else ''}, "
                f"{f.shown_clickers} unique clicker{'s' if f.shown_clickers != 1 else ''}. {was}{f.tracked_url.url}")


def _delta(figure: LinkFigure) -> str:
    """`` ▲2.5`` / `` ▼1`` / `` =`` / `` new`` after a share, when a comparison set it."""
    if figure.delta_points is None:
        return " new" if figure.compared else ""
    if figure.delta_points > 0:
        return f" \u25b2{figure.delta_points:g}"
    if figure.delta_points < 0:
        return f" \u25bc{-figure.delta_points:g}"
    return " ="


def _badges(links: Iterable[Link], figures: dict[str, LinkFigure]) -> list[Badge]:
    return [Badge(link.index, link.key, link.url, figures.get(link.key)) for link in links]


_DANGEROUS_TAGS = ("script", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "noscript")
_MARKER = re.compile(r"^hc-link:(\d+)$")


def annotate_html(
    html: str,
    figures: dict[str, LinkFigure],
    *,
    measure: str = "clicks",
    counts: bool = False,
    personal_params: Collection[str] = (),
    show_images: bool = False,
) -> tuple[str, list[Badge]]:
    """The email's HTML with a badge before each link, made safe to show, and the badges.

    Links are found as the relay finds them (``find_html_links``), so each badge is matched to its
    tracked URL by the same key. The document is then parsed with BeautifulSoup to add the badges
    and to drop what could run or load: scripts, frames, event handler attributes,
    ``javascript:`` URLs, meta refreshes, and remote images unless ``show_images`` (loading them
    would tell the sender someone looked). It is still shown in a sandboxed frame with a strict
    Content-Security-Policy: this clean-up is a second wall, not the first.

    The parsed and cleaned document, with a slot where each badge goes, is kept per content (a
    small cache), so a report only fills the slots: its cost does not grow with the email's size.
    """
    prepared, links = _prepare_html(html, tuple(sorted(personal_params)), show_images)
    badges = _badges(links, figures)
    by_index = {b.index: b for b in badges}

    def fill(match: re.Match[str]) -> str:
        return badge_html(by_index[int(match.group(1))], measure, counts)

    return _SLOT.sub(fill, prepared), badges


def badge_html(badge: Badge, measure: str = "clicks", counts: bool = False) -> Markup:
    """One badge's markup, the same in the email's frame and in the page's text view."""
    f = badge.figure
    level = "hc-untracked" if f is None else f"hc-heat-{heat_level(f.percent)}"
    percent = "" if f is None else f"{f.percent:g}"
    delta = "" if f is None or f.delta_points is None else f' data-hc-delta="{f.delta_points:g}"'
    label, tip = _html.escape(badge.text(measure, counts)), _html.escape(badge.tip(measure, counts))
    return Markup(
        f'<span class="hc-badge {level}" tabindex="0" data-hc-link="{badge.index}" '
        f'data-hc-percent="{percent}"{delta} aria-label="{label}: {tip}">{label}'
        f'<span class="hc-tip" role="tooltip">{tip}</span></span>'
    )


def html_badges(html: str, figures: dict[str, LinkFigure], *, personal_params: Collection[str] = ()) -> list[Badge]:
    """The badges of the HTML's links, without rendering anything (the JSON report's)."""
    return _badges(_html_links(html, tuple(sorted(personal_params))), figures)


_SLOT = re.compile(r"<!--hc-slot:(\d+)-->")


@functools.lru_cache(maxsize=64)
def _html_links(html: str, personal_params: tuple[str, ...]) -> list[Link]:
    return find_html_links(html, personal_params=personal_params)


@functools.lru_cache(maxsize=32)
def _prepare_html(html: str, personal_params: tuple[str, ...], show_images: bool) -> tuple[str, list[Link]]:
    from bs4 import BeautifulSoup, Comment

    links = _html_links(html, personal_params)
    marked = rewrite_html(html, {link.index: f"hc-link:{link.index}" for link in links},
                          personal_params=personal_params)
    soup = BeautifulSoup(marked, "html.parser")
    for tag in soup.find_all(_DANGEROUS_TAGS):
        tag.decompose()
    for tag in soup.find_all("meta"):
        if str(tag.get("http-equiv", "")).lower() == "refresh":
            tag.decompose()
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()  # Outlook's conditional markup: nothing a browser shows
    for tag in soup.find_all(True):
        for name in list(tag.attrs):
            value = tag.attrs[name]
            lowered = name.lower()
            if lowered.startswith("on") or lowered in ("formaction", "srcdoc"):
                del tag.attrs[name]
            elif isinstance(value, str) and value.strip().lower().startswith(("javascript:", "vbscript:")):
                del tag.attrs[name]
            elif not show_images and lowered in ("src", "srcset", "background", "poster") and not (
                isinstance(value, str) and value.startswith("data:")
            ):
                tag.attrs["data-hc-" + lowered] = value
                del tag.attrs[name]
    by_index = {link.index: link for link in links}
    for tag in soup.find_all(href=_MARKER):
        match = _MARKER.match(tag["href"])
        assert match is not None
        link = by_index[int(match.group(1))]
        tag["href"] = f"#hc-link-{link.index}"
        tag["title"] = link.url
        if tag.name != "area":  # an image map's area has no room for a badge
            tag.insert_before(Comment(f"hc-slot:{link.index}"))
    style = soup.new_tag("style")
    style.string = BADGE_CSS
    head = soup.find("head")
    if head is not None:
        head.append(style)
    else:
        soup.insert(0, style)
    return str(soup), links


@dataclass(frozen=True)
class TextPiece:
    """A piece of the text version: plain text, or a link with its badge."""

    text: str
    badge: Badge | None = None


def annotate_text(text: str, figures: dict[str, LinkFigure], *, personal_params: Collection[str] = ()) -> list[TextPiece]:
    """The text version cut into plain pieces and links, each link with its badge."""
    links = find_text_links(text, personal_params=personal_params)
    badges = _badges(links, figures)
    pieces: list[TextPiece] = []
    position = 0
    for link, badge in zip(links, badges):
        if link.start > position:
            pieces.append(TextPiece(text[position:link.start]))
        pieces.append(TextPiece(text[link.start:link.end], badge))
        position = link.end
    if position < len(text):
        pieces.append(TextPiece(text[position:]))
    return pieces
