"""Finding the trackable links of an email part and splicing new targets into it.

Email HTML is fragile: a parser that re-serializes it drops the doctype, reorders attributes,
re-quotes values and cannot see the markup Outlook renders inside ``<!--[if mso]>`` comments. So
this module never parses and re-serializes. A tokenizer made of compiled regular expressions jumps
from one construct of interest to the next (link tags, ``<base>``, ``</body>``, conditional
comments), skipping every other tag, comment, doctype, CDATA section, processing instruction and
the raw text of ``<script>``, ``<style>``, ``<title>``, ``<textarea>`` (and the other raw-text
elements) whole, following the HTML tokenizer's rules for quoting so that a ``>`` inside a quoted
attribute value does not end a tag. It records where each ``href`` value starts and ends;
:func:`rewrite_html` then replaces exactly those character ranges, so every other character of the
document stays as it was.

Outlook conditional comments (``<!--[if mso]> ... <![endif]-->``) are comments to a browser, but
Outlook renders their content: it is scanned as markup, and the ``href`` of VML elements
(``<v:roundrect>``, ``<v:rect>``, any tag name with a ``:``) found there are links too. The
downlevel-revealed form (``<!--[if !mso]><!-->`` ... ``<!--<![endif]-->``) is two ordinary
comments around ordinary markup, and is scanned as such.

Everything here is a plain function over strings: no I/O, no configuration read from anywhere.
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from html.entities import html5 as _HTML5_ENTITIES
from operator import itemgetter
from typing import Any, NamedTuple
from urllib.parse import unquote_plus, urljoin

from .splice import splice

__all__ = [
    "Link",
    "canonical_url",
    "find_html_links",
    "find_text_links",
    "html_edits",
    "rewrite_html",
    "rewrite_text",
    "text_edits",
]

#: Longest label kept for a link (anchor text, image alt or VML text).
LABEL_MAX = 200

#: Attribute that keeps a link out of tracking; removed from the sent HTML.
NOTRACK_ATTRIBUTE = "data-hc-notrack"

#: Attribute that names a link explicitly (its identity in the reports); removed from the sent HTML.
NAME_ATTRIBUTE = "data-hc-link"

#: The open pixel, inserted before the last ``</body>``; ``{}`` is the attribute-escaped URL.
PIXEL_TEMPLATE = (
    '<img src="{}" width="1" height="1" alt="" '
    'style="display:block;border:0;width:1px;height:1px" />'
)

#: The hidden trap link, inserted just before the open pixel; ``{}`` is the attribute-escaped URL.
#: No person sees it (not displayed, no text, hidden in Outlook too) nor reaches it (out of the tab
#: order, hidden from screen readers): only a program that follows every href clicks it. It takes
#: no room, so the layout does not change.
TRAP_TEMPLATE = (
    '<a href="{}" style="display:none!important;mso-hide:all;font-size:0;line-height:0;'
    'max-height:0;overflow:hidden" aria-hidden="true" tabindex="-1"></a>'
)


@dataclass(frozen=True, slots=True)
class Link:
    """One trackable link of an HTML or text part.

    ``start``/``end`` delimit the value as written (inside the quotes), so that replacing
    ``document[start:end]`` changes the target and nothing else.
    """

    #: Position in document order among the returned links, 0-based.
    index: int
    #: Offset of the first character of the href value (inside its quotes).
    start: int
    #: Offset just past the value.
    end: int
    #: ``'"'``, ``"'"`` or ``''`` for an unquoted value (and for text parts).
    quote: str
    #: The value as written, e.g. ``'https://x.org/?a=1&amp;b=2'``.
    raw: str
    #: The real target: entities decoded, surrounding whitespace and embedded newlines and tabs
    #: removed (as a browser's URL parser does), resolved against ``<base href>`` when relative.
    url: str
    #: Lower-cased tag name (``'a'``, ``'area'``, ``'v:roundrect'``...), ``'text'`` in text parts.
    tag: str
    #: Anchor text, else the alt of an image inside the link, else the VML element's text; or ''.
    label: str
    #: Value of ``data-hc-link="..."`` (an explicit link name), else None.
    name: str | None
    #: True inside an Outlook conditional comment ``<!--[if ...]>...<![endif]-->``.
    conditional: bool
    #: Identity of the link inside the document (see :func:`find_html_links`).
    key: str


class _LinkSlots:
    """The slots of a :class:`Link`, writable.

    A link is made by filling one and then giving it the Link class (the layout is the same):
    three times faster than ``Link(...)``, whose generated ``__init__`` sets each field through
    ``object.__setattr__``, as a frozen dataclass must. A document has dozens of links.
    """

    __slots__ = Link.__slots__


def _new_link(
    index: int,
    start: int,
    end: int,
    quote: str,
    raw: str,
    url: str,
    tag: str,
    label: str,
    name: str | None,
    conditional: bool,
    key: str,
) -> Link:
    """``Link(index, start, ...)``, made faster (see :class:`_LinkSlots`)."""
    link: Any = _LinkSlots()
    link.index = index
    link.start = start
    link.end = end
    link.quote = quote
    link.raw = raw
    link.url = url
    link.tag = tag
    link.label = label
    link.name = name
    link.conditional = conditional
    link.key = key
    link.__class__ = Link
    return link


# --------------------------------------------------------------------------------------------
# The tokenizer
#
# CPython's regex engine costs a fixed amount per operation and per loop iteration, so the
# patterns are shaped for it: long runs are single-character negations ([^<], [^"], [^-]), which
# it scans in a tight loop; the branch taken after "<" is chosen by its first character; common
# attributes (name="value") are read in one loop iteration; no re.IGNORECASE (tag names are
# matched with [Aa]-style classes, which is also exactly ASCII case-insensitivity).
#
# The HTML tokenizer's whitespace is exactly these five characters (never \s: a no-break space
# is an ordinary character inside an unquoted attribute value).
_WS = "\\t\\n\\f\\r "


def _ci(word: str) -> str:
    """``word`` matched ASCII-case-insensitively, as HTML matches tag names."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# The rest of a tag after its name: attributes as the HTML tokenizer reads them. A quote only
# opens a quoted value right after "=" (an attribute name or an unquoted value may contain
# quotes); "/" between attributes is skipped; the tag ends at the first ">" outside a quoted
# value. An unterminated quoted value runs to the end of the document, where the match then fails
# (possessive loop): the tag is dropped, as a browser drops a tag cut by the end of the file.
_VALUE = rf"""(?:"[^"]*+(?:"|\Z)|'[^']*+(?:'|\Z)|[^{_WS}>"'][^{_WS}>]*+)"""
_ATTRS = rf"(?:[{_WS}/]*+[^{_WS}/>][^{_WS}/>=]*+(?:[{_WS}]*+=[{_WS}]*+{_VALUE}?)?)*+[{_WS}/]*+>"
# The common case, read faster: plain names, each with a double-quoted value. When it matches,
# it is the tokenizer's reading; when it does not, _ATTRS reads the tag from its name again.
# (A positive class for the names is measurably faster than a negated one.)
_COMMON_ATTRS = rf"""(?:[{_WS}]++[-A-Za-z0-9:_]++="[^"]*+")*+[{_WS}/]*+>"""
_TAGREST = rf"""(?:>|(?: [-A-Za-z0-9:_]++="[^"]*+")*+[{_WS}/]*+>|{_COMMON_ATTRS}|{_ATTRS})"""
_NAME = rf"[A-Za-z][^{_WS}/>]*+"
_END = rf"(?=[{_WS}/>])"  # what may follow a tag name
# Elements whose content is raw text (no markup inside); plaintext runs to the end.
_RAW_ELEMENTS = ("script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes")
# A conditional comment opener (after "<!"). The downlevel-revealed one is an ordinary comment
# whose content is ordinary markup: the opener followed at once by "<!-->" (or, for a negated
# condition like "[if !mso]", by any comment end: "<!---->", "<!-- -->"). "<!--[if mso]><!-- -->"
# stays a conditional comment that starts with a comment: Outlook renders what follows.
_COND_OPEN = rf"--\[{_ci('if')}[^\]<>]*+\]>"
# What follows "<!--[if" in a downlevel-revealed opener, in two parts: the condition up to its
# first "!", and the rest (a "<!-->" follows any condition; any comment end a negated one).
_CONDITION_START = r"[^\]<>!]*+"
_DOWNLEVEL_REVEALED_REST = rf"![^\]<>]*+\]>[{_WS}]*+<![^<>]*?-->|\]>[{_WS}]*+<!-->"
# What follows "<!--" in an ordinary comment: it ends at the first "-->" or "--!>" (or at once
# with ">" or "->"), or runs to the end of the document. Written as an unrolled loop (runs of
# [^-], then one "-" at a time), which the regex engine reads with the fewest steps.
_COMMENT_REST = r"[^-]*+(?:-(?!-!?>)[^-]*+)*+(?:--!?>|\Z)"
# Inside a conditional comment, an ordinary comment also ends before "<![endif]": real mail
# closes "<!--[if mso]>" with "<!--<![endif]-->" too, and both a browser (whose comment ends at
# the first "-->") and Outlook (whose conditional ends at "<![endif]") end the region there.
_ENDIF = rf"!\[{_ci('endif')}\]"
_COMMENT_REST_IN_CONDITIONAL = (
    rf"[^-<]*+(?:(?:-(?!-!?>)|<(?!{_ENDIF}))[^-<]*+)*+(?:--!?>|\Z|(?=<{_ENDIF}))"
)

# Any other "<!" (a doctype, a CDATA section, "<![endif]" outside a conditional comment) is, as
# for a browser reading HTML, a bogus comment that ends at the first ">". ("<?" too.)
_BOGUS = r"[^>]*+>?"


# Link elements are read in parts: attributes other than href and the markers, the href, and
# attributes other than the markers. With these, a link element that cannot matter (no marker
# attribute, and no href or one that is certainly not tracked: "#...", "mailto:", empty, "http://"
# without a host, an unrendered placeholder...) is skipped like any other tag, and a plain <a>
# has its href value captured by the scanner itself.
_HREF_NAME = rf"{_ci('href')}(?=[{_WS}/>=])"
_MARKER = _ci("data-hc-")
_OTHER_ATTR = (
    rf"[{_WS}/]*+(?!{_ci('href')}[{_WS}/>=]|{_MARKER})[^{_WS}/>][^{_WS}/>=]*+"
    rf"(?:[{_WS}]*+=[{_WS}]*+{_VALUE}?)?"
)
_UNMARKED_ATTR = (
    rf"[{_WS}/]*+(?!{_MARKER})[^{_WS}/>][^{_WS}/>=]*+(?:[{_WS}]*+=[{_WS}]*+{_VALUE}?)?"
)
_NO_LINK_ATTRS = rf"(?:{_OTHER_ATTR})*+[{_WS}/]*+>"
_UNTRACKED_START = "|".join(
    ["#", *(_ci(scheme) for scheme in ("mailto:", "tel:", "sms:", "javascript:"))]
)
#: "http://" or "https://" and nothing else: no host.
_NO_HOST = rf"{_ci('http')}[Ss]?://"


def _placeholder_value(quote: str) -> str:
    """A value quoted with ``quote`` that holds one of the common placeholders ("{{...}}",
    "*|...|*", "%%name%%"; see _has_placeholder), and no "&" (a character reference could hide what
    it is) or "[" (an IPv6 host, which _has_placeholder sets aside, could hold it).

    Each opener is looked for once, at its first occurrence, so the time stays linear in the
    value's length.
    """
    q = quote
    braces = rf"[^{q}{{]*+(?:\{{(?!\{{)[^{q}{{]*+)*+\{{\{{[^{q}]*?\}}\}}"
    pipes = rf"[^{q}*]*+(?:\*(?!\|)[^{q}*]*+)*+\*\|[^{q}]*?\|\*"
    percents = rf"[^{q}]*?%%[A-Za-z0-9_]++%%"
    return rf"{q}(?=[^{q}&\[]*+{q})(?={braces}|{pipes}|{percents})[^{q}]*+{q}"


_UNTRACKED_VALUE = (
    rf"""(?:"[{_WS}]*+(?:{_UNTRACKED_START})[^"]*+"|'[{_WS}]*+(?:{_UNTRACKED_START})[^']*+'"""
    rf"""|(?:{_UNTRACKED_START})[^{_WS}>]*+|""|''|(?=>)"""
    rf"""|"[{_WS}]*+{_NO_HOST}[{_WS}]*+"|'[{_WS}]*+{_NO_HOST}[{_WS}]*+'"""
    rf"""|{_placeholder_value('"')}|{_placeholder_value("'")})"""
)
# An href that is present must be followed by its value (when "=" follows): the "=" must never
# be read as the start of another attribute.
_UNTRACKED_LINK_ATTRS = (
    rf"(?:{_OTHER_ATTR})*+[{_WS}/]*+{_HREF_NAME}"
    rf"(?:[{_WS}]*+=[{_WS}]*+{_UNTRACKED_VALUE}|(?![{_WS}]*+=))"
    rf"(?:{_UNMARKED_ATTR})*+[{_WS}/]*+>"
)
_CAPTURED_HREF_ATTRS = (
    rf"(?:{_OTHER_ATTR})*+[{_WS}/]*+{_HREF_NAME}[{_WS}]*+=[{_WS}]*+"
    rf"""(?:"(?P<dq>[^"]*+)"|'(?P<sq>[^']*+)'|(?P<uq>[^{_WS}>"'][^{_WS}>]*+))"""
    rf"(?:{_UNMARKED_ATTR})*+[{_WS}/]*+>"
)


def _skip(conditional: bool) -> str:
    """A pattern that skips every construct of no interest, possessively.

    Nothing is ever re-read from inside a value or a comment. Of interest at the top level:
    ``<a>``, ``<area>`` (with an href or a marker attribute), ``<base>``, ``</body>`` and the
    conditional comments that hold one of those. Inside a conditional comment: ``<a>``,
    ``<area>``, tags whose name has a ``:`` (VML) with an href or a marker, a nested opener and
    ``<![endif]``.
    """
    # Inside a conditional comment a tag name with ":" may be of interest, so generic names stop
    # short of one.
    name_rest = rf"[^{_WS}/>:]*+(?!:)" if conditional else rf"[^{_WS}/>]*+"
    tag = name_rest + _TAGREST
    # The engine tries the branches after "<" in order, and rejects one cheaply when it starts
    # with a literal character (a class like [Tt] costs several times more): so each branch
    # starts with one character, the most common first (end tags, then <td>, <tr>, <table>,
    # comments), lower case before upper case.
    if conditional:
        end_tag = rf"[A-Za-z][^{_WS}/>]*+(?:[{_WS}/]*+>|{_TAGREST})"
    else:
        end_tag = (
            rf"(?:[AC-Zac-z]|[Bb](?!{_ci('ody')}{_END}))[^{_WS}/>]*+(?:[{_WS}/]*+>|{_TAGREST})"
        )
    # "</td>", "</tr>", "</table>", "</div>": read at once; "</" and no name is a bogus comment.
    branches = [rf"/(?:t[a-z0-9]*+>|[ac-z][a-z0-9]*+>|{end_tag}|(?![A-Za-z]){_BOGUS})"]
    by_letter: dict[str, str] = {}
    for element in (*_RAW_ELEMENTS, "plaintext"):
        if element == "plaintext":
            rest = rf"{_ci(element[2:])}{_END}[\s\S]*+"
        else:
            content = rf"[^<]*+(?:<(?!/{_ci(element)}[{_WS}/>])[^<]*+)*+"
            rest = rf"{_ci(element[2:])}{_END}{_TAGREST}{content}"
        # The second letter as two literals: "<td" is told from "<title" at once.
        options = f"{element[1]}{rest}|{element[1].upper()}{rest}|"
        by_letter[element[0]] = by_letter.get(element[0], "") + options
    by_letter = {first: f"(?:{options}{tag})" for first, options in by_letter.items()}
    # An <a> whose first attribute is an http(s) href is a link (unless it has no host): the
    # scanner reads it once.
    by_letter["a"] = (
        rf"(?![{_WS}]++href=\"http(?!s?://\"))(?:(?!{_END}|{_ci('rea')}{_END}){tag}"
        rf"|(?:{_ci('rea')})?{_END}(?:{_NO_LINK_ATTRS}|{_UNTRACKED_LINK_ATTRS}))"
    )
    by_letter["b"] = tag if conditional else rf"(?!{_ci('ase')}{_END}){tag}"
    generic = "".join(sorted(set("abcdefghijklmnopqrstuvwxyz") - set(by_letter)))
    if_ = _ci("if")
    not_cond = rf"(?!{if_}[^\]<>]*+\]>)"
    if conditional:
        comment_rest = _COMMENT_REST_IN_CONDITIONAL
        after_if = rf"{_CONDITION_START}(?:{_DOWNLEVEL_REVEALED_REST})"
        bogus = rf"(?!\[{_ci('endif')}\]){_BOGUS}"
    else:
        comment_rest = _COMMENT_REST
        # A conditional comment with nothing of interest inside is skipped whole.
        boring = rf"(?:\]>|![^\]<>]*+\]>){_skip(conditional=True)}<{_ENDIF}[^>]*+>?"
        after_if = rf"{_CONDITION_START}(?:{_DOWNLEVEL_REVEALED_REST}|{boring})"
        bogus = _BOGUS
    comment = (
        rf"--(?:\[(?:{if_}(?:{after_if})|{not_cond}{comment_rest})"
        rf"|>|->|(?!\[){comment_rest})"
    )
    branches += [
        f"t{by_letter['t']}",
        rf"!(?:{comment}|(?!--){bogus})",
        f"[{generic}]{tag}",
        *(f"{first}{by_letter[first]}" for first in "absipxn"),
        f"T{by_letter['t']}",
        f"[{generic.upper()}]{tag}",
        *(f"{first.upper()}{by_letter[first]}" for first in "absipxn"),
    ]
    if conditional:
        # VML without an href that matters
        branches.append(
            rf"[A-Za-z][^{_WS}/>:]*+:[^{_WS}/>]*+(?:{_NO_LINK_ATTRS}|{_UNTRACKED_LINK_ATTRS})"
        )
    branches += [
        rf"\?{_BOGUS}",  # processing instruction: a bogus comment
        r"(?![A-Za-z!/?])",  # a "<" that is text
    ]
    return rf"[^<]*+(?:<(?:{'|'.join(branches)})[^<]*+)*+"


def _scanner(conditional: bool) -> re.Pattern[str]:
    """The scanner for the top level, or for the inside of a conditional comment.

    One match skips what is of no interest (:func:`_skip`) and stops on the next construct of
    interest, which it names. "bad" is an unterminated tag that runs to the end of the document:
    nothing more to find.
    """
    # The common link, <a href="..." ...>, read at once; markers, if any, are found afterwards.
    fast = (
        rf"""(?P<first><a[{_WS}]++href="(?P<fq>[^"]*+)"{_TAGREST})"""
        rf"|(?P<fast><[Aa]{_END}{_CAPTURED_HREF_ATTRS})|"
    )
    if conditional:
        interest = fast + (
            rf"(?P<link><[Aa](?:{_ci('rea')})?{_END}{_TAGREST})"
            rf"|(?P<vml><[A-Za-z][^{_WS}/>:]*+:[^{_WS}/>]*+{_TAGREST})"
            rf"|(?P<cond><!{_COND_OPEN})"
            rf"|(?P<endif><{_ENDIF}[^>]*+>?)"
        )
    else:
        interest = fast + (
            rf"(?P<link><[Aa](?:{_ci('rea')})?{_END}{_TAGREST})"
            rf"|(?P<base><{_ci('base')}{_END}{_TAGREST})"
            rf"|(?P<cond><!{_COND_OPEN})"
            rf"|(?P<body></{_ci('body')}{_END}{_TAGREST})"
        )
    return re.compile(rf"{_skip(conditional)}(?:{interest}|(?P<eof>\Z)|(?P<bad>))")


_SCAN_TOP = _scanner(conditional=False)
_SCAN_COND = _scanner(conditional=True)

# The attributes of a tag of interest, read the same way as _TAGREST reads them.
_ATTR = re.compile(
    rf"(?P<ws>[{_WS}]*)(?P<name>[^{_WS}/>][^{_WS}/>=]*)"
    rf"(?:[{_WS}]*=[{_WS}]*(?:\"(?P<dq>[^\"]*)\"?|'(?P<sq>[^']*)'?|(?P<uq>[^{_WS}>\"'][^{_WS}>]*)))?"
)
_TAG_NAME = re.compile(_NAME)
# The first href of a tag of interest, read the same way (the tag's attributes up to it skipped).
_HREF = re.compile(
    rf"(?:[{_WS}/]*+(?!{_ci('href')}[{_WS}/>=])[^{_WS}/>][^{_WS}/>=]*+"
    rf"(?:[{_WS}]*+=[{_WS}]*+{_VALUE}?)?)*+[{_WS}/]*+{_ci('href')}(?=[{_WS}/>=])"
    rf"(?:[{_WS}]*+=[{_WS}]*+(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<uq>[^{_WS}>\"'][^{_WS}>]*+)))?"
)
#: Marker attributes start with this; a tag without it needs no attribute-by-attribute reading.
_MARKER_PREFIX = "data-hc-"

# --------------------------------------------------------------------------------------------
# Values


_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_LEGACY_MAX = max(len(name) for name in _HTML5_ENTITIES if not name.endswith(";"))


def _attr_charref(match: re.Match[str]) -> str:
    text = match.group(0)
    if text[1] == "#":
        return _html.unescape(text)
    name = match.group(1)
    if name.endswith(";") and name in _HTML5_ENTITIES:
        return _HTML5_ENTITIES[name]
    # A named reference without ";" is one of the legacy names, the longest that fits. Inside
    # an attribute it is left as written when followed by "=" or an alphanumeric character
    # (so "?a=1&copy=2" keeps its "&copy").
    for size in range(min(len(name), _LEGACY_MAX), 1, -1):
        prefix = name[:size]
        if prefix in _HTML5_ENTITIES:
            if size < len(name):
                return text  # followed by an alphanumeric character
            following = match.string[match.end() : match.end() + 1]
            if following == "=":
                return text
            return _HTML5_ENTITIES[prefix]
    return text


def _unescape_attr(value: str) -> str:
    """An attribute value as a browser reads it (the HTML rules for references in attributes)."""
    if "&" not in value:
        return value
    return _CHARREF.sub(_attr_charref, value)


def _escape_attr(value: str, quote: str) -> str:
    value = value.replace("&", "&amp;")
    if quote == "'":
        return value.replace("'", "&#39;")
    return value.replace('"', "&quot;")


# What the URL parser strips around a URL (C0 controls and space), and removes from inside it.
_URL_STRIP = "".join(chr(c) for c in range(0x21))
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://([^/?#\\]*)")
#: The common authority: a plain host (no user, port or IPv6 address), read at once.
_PLAIN_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://([^/?#\\@:\[]*+)(?![^/?#\\])")
# Unrendered template placeholders: such an href is the template engine's, not ours to track.
# Every test below stays linear in the href's length (the relay reads the hrefs of any message a
# stranger sends): an opener is looked for once, at its first occurrence, and then its closer
# after it, never again from every later opener ("{" * 100000 would take minutes).
#: "{{...}}", "{%...%}", "*|...|*", "<%...%>", "${...}": an opener, then its closer after it.
_PLACEHOLDER_PAIRS = (("{{", "}}"), ("{%", "%}"), ("*|", "|*"), ("<%", "%>"), ("${", "}"))
#: "%7B%7B...%7D%7D" ("{{...}}" percent-encoded, in either case): the opener, then the closer.
_ENCODED_OPENER = re.compile(r"%7[Bb]%7[Bb]")
_ENCODED_CLOSER = re.compile(r"%7[Dd]%7[Dd]")
#: "%%name%%" and "[...]": each run read here ends at the next "%" or bracket, so no character
#: is read twice.
_PLACEHOLDER = re.compile(r"%%[^%]+%%|\[[^\[\]]*\]")
#: An IPv6 host with its scheme (and user): the scheme starts at the first letter of its run of
#: scheme characters, which is read once (a search from each letter would read it again).
_IPV6_AUTHORITY = re.compile(
    r"(?<![A-Za-z0-9+.\-])[0-9+.\-]*+"
    r"(?P<authority>[A-Za-z][A-Za-z0-9+.\-]*+://(?:[^/?#@\[]*@)?\[[0-9A-Fa-f:.]+\])"
)


def _clean_url(value: str) -> str:
    value = value.strip(_URL_STRIP)
    if "\n" in value or "\t" in value or "\r" in value:
        value = value.replace("\n", "").replace("\t", "").replace("\r", "")
    return value


def _has_placeholder(url: str) -> bool:
    """Whether the href holds an unrendered template placeholder, in time linear in its length."""
    if not ("{" in url or "|" in url or "%" in url or "[" in url):
        return False  # the common case, decided at once
    if "[" in url:
        ipv6 = _IPV6_AUTHORITY.search(url)
        if ipv6 is not None:  # an IPv6 host is not a placeholder: the first one is set aside
            url = url[: ipv6.start("authority")] + url[ipv6.end() :]
    for opener, closer in _PLACEHOLDER_PAIRS:
        at = url.find(opener)
        if at >= 0 and url.find(closer, at + len(opener)) >= 0:
            return True
    encoded = _ENCODED_OPENER.search(url)
    if encoded is not None and _ENCODED_CLOSER.search(url, encoded.end()) is not None:
        return True
    return _PLACEHOLDER.search(url) is not None


def _host(url: str) -> str:
    """The lower-cased host of an absolute URL with an authority, or ''."""
    plain = _PLAIN_AUTHORITY.match(url)
    if plain is not None:
        return plain.group(1).rstrip(".").lower()
    authority = _AUTHORITY.match(url)
    if authority is None:
        return ""
    host = authority.group(1)
    if "@" in host:
        host = host.rpartition("@")[2]
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1].lower() if end > 0 else ""
    return host.partition(":")[0].rstrip(".").lower()


class _Options(NamedTuple):
    """The options every function takes, normalized and hashable (for the caches)."""

    personal: frozenset[str]
    excluded: tuple[str, ...]
    prefixes: tuple[str, ...]

    @classmethod
    def of(
        cls,
        personal_params: Collection[str],
        excluded_domains: Collection[str],
        tracked_prefixes: Collection[str],
    ) -> _Options:
        if not (personal_params or excluded_domains or tracked_prefixes):
            return _NO_OPTIONS
        for name, value in (
            ("personal_params", personal_params),
            ("excluded_domains", excluded_domains),
            ("tracked_prefixes", tracked_prefixes),
        ):
            if isinstance(value, str):
                raise TypeError(f"{name} is a collection of strings, not a string")
        excluded = (d.strip().strip(".").lower() for d in excluded_domains)
        return cls(
            frozenset(personal_params),
            tuple(d for d in excluded if d),
            tuple(p for p in tracked_prefixes if p),
        )

    def target(self, url: str, base: str | None) -> str | None:
        """The absolute http(s) target of a cleaned value, or None when it is not tracked."""
        if not url or url[0] == "#" or _has_placeholder(url):
            return None
        if not url.startswith(("https://", "http://")):  # the common case, decided at once
            scheme = _SCHEME.match(url)
            if scheme is None:
                if base is None:
                    return None
                url = urljoin(base, url)
                scheme = _SCHEME.match(url)
                if scheme is None:
                    return None
            if scheme.group(1).lower() not in ("http", "https"):
                return None
        host = _host(url)
        if not host:
            return None
        for domain in self.excluded:
            if host == domain or host.endswith("." + domain):
                return None
        if self.prefixes and url.startswith(self.prefixes):
            return None
        return url


_NO_OPTIONS = _Options(frozenset(), (), ())


def canonical_url(url: str, personal_params: Collection[str]) -> str:
    """The target without its personal query parameters, the others kept as written and in order.

    A parameter is personal when its (percent-decoded) name is in ``personal_params``. The
    fragment is kept. When no parameter is left, the ``?`` goes too.
    """
    if not personal_params or "?" not in url:
        return url
    personal = personal_params if isinstance(personal_params, (set, frozenset)) else set(personal_params)
    hash_at = url.find("#")
    head, fragment = (url, "") if hash_at < 0 else (url[:hash_at], url[hash_at:])
    query_at = head.find("?")
    if query_at < 0:
        return url
    parts = head[query_at + 1 :].split("&")
    kept = [p for p in parts if unquote_plus(p.partition("=")[0]) not in personal]
    if len(kept) == len(parts):
        return url
    query = "&".join(kept)
    return head[:query_at] + ("?" + query if query else "") + fragment


# --------------------------------------------------------------------------------------------
# Labels

_STRIP_MARKUP = re.compile(
    rf"<!--[\s\S]*?(?:-->|\Z)"
    rf"|<(?:{_ci('script')}|{_ci('style')})\b[\s\S]*?(?:</(?:{_ci('script')}|{_ci('style')})\s*>|\Z)"
    r"|<[A-Za-z/!?][^>\"']*+(?:(?:\"[^\"]*\"|'[^']*')[^>\"']*+)*+>?"
)
# Case-insensitive as re.IGNORECASE would make it ("i" also matches "\u0130" and "\u0131"), but
# spelled out: a pattern that starts with a literal "<" is searched for much faster. The tag is
# read a piece at a time (a run of other characters, one separator, a quoted value), and an alt is
# looked for after each piece: so also after a run of separators, as in 'src="x.png"\n\t\talt='.
# Other whitespace (a no-break space...) still counts before "alt" only where it always did: not
# right after a separator, where HTML reads it as part of a name.
_IMG_ALT = re.compile(
    rf"<[Ii\u0130\u0131][Mm][Gg]\b(?:[^>\"'{_WS}/]++|[{_WS}/]|\"[^\"]*\"|'[^']*')*?"
    rf"(?:[{_WS}/\"']|(?<![{_WS}/])\s)[Aa][Ll][Tt]\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))"
)
#: How far after a link tag its text is looked for.
_LABEL_WINDOW = 20000
_LABEL_END: dict[str, re.Pattern[str]] = {}


def _label_end(tag: str) -> re.Pattern[str]:
    """Where the text of a link element ends: its end tag, the next link, the conditional's end."""
    pattern = _LABEL_END.get(tag)
    if pattern is None:
        if tag == "a":
            pattern = re.compile(rf"</?{_ci('a')}[{_WS}/>]|<{_ENDIF}")
        else:
            pattern = re.compile(rf"</{_ci(tag)}[{_WS}/>]|<{_ENDIF}")
        _LABEL_END[tag] = pattern
    return pattern


def _clip(text: str) -> str:
    """Whitespace collapsed, at most LABEL_MAX characters."""
    return " ".join(text.split())[:LABEL_MAX]


def _text(markup: str) -> str:
    """The text of a piece of HTML: tags and comments dropped, entities decoded."""
    if "<" in markup:
        markup = _STRIP_MARKUP.sub(" ", markup)
    return _html.unescape(markup) if "&" in markup else markup


def _label(doc: str, tag: str, tag_end: int, alt: str) -> str:
    """The anchor text, else an image's alt inside the link, else the VML element's text."""
    if tag == "area":
        return _clip(alt)
    if tag != "a" and doc[tag_end - 2 : tag_end] == "/>":
        return ""  # a self-closed VML element has no text
    limit = min(len(doc), tag_end + _LABEL_WINDOW)
    end = _label_end(tag).search(doc, tag_end, limit)
    fragment = doc[tag_end : end.start() if end else limit]
    label = _clip(_text(fragment))
    if not label:
        image = _IMG_ALT.search(fragment)
        if image:
            label = _clip(_text(next(g for g in image.groups() if g is not None)))
    return label


# --------------------------------------------------------------------------------------------
# Scanning


class _Href(NamedTuple):
    """A link element's href as scanned, before trackability is decided."""

    start: int
    end: int
    quote: str
    raw: str
    clean: str  # entities decoded, whitespace removed
    tag: str
    tag_end: int
    alt: str  # an <area>'s alt, for its label
    name: str | None
    conditional: bool


class _Scan(NamedTuple):
    hrefs: tuple[_Href, ...]
    markers: tuple[tuple[int, int], ...]  # marker attributes to remove
    base: str | None  # the first <base href>, when absolute http(s)
    body: int | None  # where the last </body> starts


_SEPARATORS = frozenset("\t\n\f\r />")


def _marker_span(doc: str, attr: re.Match[str]) -> tuple[int, int]:
    """A marker attribute with the whitespace before it, unless the next attribute follows it
    without whitespace (``data-hc-link="x"href=...``): that whitespace then stays."""
    if doc[attr.end() : attr.end() + 1] in _SEPARATORS:
        return attr.start(), attr.end()
    return attr.start("name"), attr.end()


def _attr_value(attr: re.Match[str]) -> str:
    for group in ("dq", "sq", "uq"):
        value = attr.group(group)
        if value is not None:
            return _unescape_attr(value)
    return ""


def _read_link_tag(
    doc: str, start: int, end: int, conditional: bool, markers: list[tuple[int, int]]
) -> _Href | None:
    """The href of the link element ``doc[start:end]``; its marker attributes go to ``markers``."""
    name_end = _TAG_NAME.match(doc, start + 1).end()  # type: ignore[union-attr]
    tag = doc[start + 1 : name_end].lower()
    link_name: str | None = None
    alt = ""
    if tag == "area" or _MARKER_PREFIX in doc[name_end:end].lower():
        # Read every attribute: markers to remove, the link's name, an area's alt.
        href: re.Match[str] | None = None
        notrack = False
        for a in _ATTR.finditer(doc, name_end, end - 1):
            attr = a.group("name").lower()
            if attr == "href":
                if href is None:
                    href = a
            elif attr == NOTRACK_ATTRIBUTE:
                notrack = True
                markers.append(_marker_span(doc, a))
            elif attr == NAME_ATTRIBUTE:
                markers.append(_marker_span(doc, a))
                if link_name is None:
                    link_name = _attr_value(a).strip() or None
            elif attr == "alt" and not alt:
                alt = _attr_value(a)
        if href is None or notrack:
            return None
    else:
        href = _HREF.match(doc, name_end, end)
        if href is None:
            return None
    for group, quote in (("dq", '"'), ("sq", "'"), ("uq", "")):
        if href.start(group) >= 0:
            value_start, value_end = href.span(group)
            break
    else:  # "href" without a value
        value_start = value_end = href.end()
        quote = ""
    raw = doc[value_start:value_end]
    clean = _clean_url(_unescape_attr(raw) if "&" in raw else raw)
    return _Href(
        value_start, value_end, quote, raw, clean, tag, end, alt, link_name, conditional
    )


@lru_cache(maxsize=16)
def _scan(doc: str) -> _Scan:
    """Every link element's href, the marker attributes, the base URL and the last ``</body>``.

    Hrefs marked ``data-hc-notrack`` are left out. Cached, as :func:`_trackable`: the relay finds
    the links of a part once and then rewrites the part once per recipient.
    """
    hrefs: list[_Href] = []
    markers: list[tuple[int, int]] = []
    base: str | None = None
    base_seen = False
    body: int | None = None
    depth = 0
    pos = 0
    scan = _SCAN_TOP.match
    while True:
        m = scan(doc, pos)
        assert m is not None  # the scanner always matches: "eof" or "bad" at worst
        kind = m.lastgroup
        pos = m.end()
        if kind == "first":  # <a href="..." ...>, its href value captured
            value_start, value_end = m.span("fq")
            if _MARKER_PREFIX in doc[value_end:pos].lower():
                href = _read_link_tag(doc, m.start(kind), pos, depth > 0, markers)
                if href is not None:
                    hrefs.append(href)
            else:
                raw = m.group("fq")
                clean = _clean_url(_unescape_attr(raw) if "&" in raw else raw)
                hrefs.append(
                    _Href(value_start, value_end, '"', raw, clean, "a", pos, "", None, depth > 0)
                )
        elif kind == "fast":  # a plain <a>, its href value captured
            for group, quote in (("dq", '"'), ("sq", "'"), ("uq", "")):
                value_start, value_end = m.span(group)
                if value_start >= 0:
                    break
            raw = doc[value_start:value_end]
            clean = _clean_url(_unescape_attr(raw) if "&" in raw else raw)
            hrefs.append(
                _Href(value_start, value_end, quote, raw, clean, "a", pos, "", None, depth > 0)
            )
        elif kind == "link" or kind == "vml":
            href = _read_link_tag(doc, m.start(kind), pos, depth > 0, markers)
            if href is not None:
                hrefs.append(href)
        elif kind == "cond":
            depth += 1
            scan = _SCAN_COND.match
        elif kind == "endif":
            depth -= 1
            if depth == 0:
                scan = _SCAN_TOP.match
        elif kind == "base":
            if not base_seen:
                a = _HREF.match(doc, m.start(kind) + 5, pos)
                if a is not None:
                    # The document's base URL is the first <base> with an href.
                    base_seen = True
                    candidate = _clean_url(_attr_value(a))
                    scheme = _SCHEME.match(candidate)
                    if scheme and scheme.group(1).lower() in ("http", "https"):
                        base = candidate
        elif kind == "body":
            body = m.start(kind)
        else:  # "eof", or "bad": an unterminated tag, which ends the document
            return _Scan(tuple(hrefs), tuple(markers), base, body)


@lru_cache(maxsize=16)
def _trackable(doc: str, options: _Options) -> tuple[tuple[_Href, str], ...]:
    """The trackable hrefs of a document, each with its target."""
    scan = _scan(doc)
    kept = []
    for href in scan.hrefs:
        target = options.target(href.clean, scan.base)
        if target is not None:
            kept.append((href, target))
    return tuple(kept)


def _keys(links: list[tuple[str, str | None, bool]], personal: frozenset[str]) -> list[str]:
    """The key of each link, given as (target, name, conditional) (see :func:`find_html_links`)."""
    occurrences: dict[str, int] = {}
    keys: list[str] = []
    for target, name, conditional in links:
        if conditional:
            return _keys_with_twins(links, personal)
        if personal:
            target = canonical_url(target, personal)
        n = occurrences[target] = occurrences.get(target, 0) + 1
        keys.append(name or f"{target}#{n}")
    return keys


def _keys_with_twins(
    links: list[tuple[str, str | None, bool]], personal: frozenset[str]
) -> list[str]:
    """:func:`_keys` when links are conditional: a conditional link and its twin count once."""
    canonical = [canonical_url(target, personal) for target, _, _ in links]
    names = [name for _, name, _ in links]
    conditional = [c for _, _, c in links]
    following: list[int | None] = [None] * len(links)
    last: dict[str, int] = {}
    for i in range(len(links) - 1, -1, -1):
        following[i] = last.get(canonical[i])
        last[canonical[i]] = i
    keys = [""] * len(links)
    occurrences: dict[str, int] = {}
    for i, target in enumerate(canonical):
        if keys[i]:
            continue  # the twin of an earlier conditional link
        twin = following[i] if conditional[i] else None
        if twin is not None and conditional[twin]:
            twin = None
        n = occurrences[target] = occurrences.get(target, 0) + 1
        name = (names[twin] if twin is not None else None) or names[i]
        keys[i] = name or f"{target}#{n}"
        if twin is not None:
            keys[twin] = keys[i]
    return keys


def find_html_links(
    html: str,
    *,
    personal_params: Collection[str] = (),
    excluded_domains: Collection[str] = (),
    tracked_prefixes: Collection[str] = (),
) -> list[Link]:
    """The trackable links of an HTML document, in document order.

    Trackable: the ``href`` of ``<a>`` and ``<area>`` anywhere, and of any VML element (a tag
    name with a ``:``, like ``v:roundrect``) inside an Outlook conditional comment, whose target
    is an http(s) URL with a host. Relative hrefs resolve against the document's ``<base href>``
    when it has one (and are left alone when it has none). Left alone: other schemes (``mailto:``,
    ``tel:``, ``javascript:``...), ``#anchors``, empty hrefs, ``http://`` without a host, hrefs
    holding an unrendered template placeholder (``{{...}}``, ``{%...%}``, ``*|...|*``,
    ``%%...%%``, ``[...]``, ``<%...%>``, ``${...}``), hosts equal to or under one of
    ``excluded_domains``, targets starting with one of ``tracked_prefixes`` (already tracked), and
    links marked ``data-hc-notrack``. Nothing in comments, ``<script>``, ``<style>``, ``<title>``
    or ``<textarea>`` is a link, except inside conditional comments, which Outlook renders.

    ``key`` is the identity of a link inside the document (the relay gives each key one tracked
    URL of the execution):

    - the ``data-hc-link="..."`` name when the link has one;
    - else ``canonical_url(url, personal_params) + "#" + n``, where ``n`` counts the occurrences
      of that canonical target among the document's links (named ones included), 1-based. Two
      links to the same URL in two places are ``...#1`` and ``...#2``: two tracked URLs.
    - A bulletproof button is written twice, a VML element inside ``<!--[if mso]>`` for Outlook
      and an ``<a>`` for everyone else, and it must count once. So a link inside a conditional
      comment whose next link to the same canonical target is outside any conditional comment
      shares that twin's key, and the pair is one occurrence. The pair's key is the twin's name,
      else the conditional link's name, else the target with its occurrence. Several links can
      therefore share a key, by design.

    ``personal_params`` are query parameters that identify the recipient (left out of the key, so
    every recipient's copy of a link maps to the same tracked URL).
    """
    options = _Options.of(personal_params, excluded_domains, tracked_prefixes)
    kept = _trackable(html, options)
    keys = _keys([(target, h.name, h.conditional) for h, target in kept], options.personal)
    return [
        _new_link(
            i,
            h.start,
            h.end,
            h.quote,
            h.raw,
            target,
            h.tag,
            _label(html, h.tag, h.tag_end, h.alt),
            h.name,
            h.conditional,
            keys[i],
        )
        for i, (h, target) in enumerate(kept)
    ]


def rewrite_html(
    html: str,
    hrefs: Mapping[int, str],
    *,
    personal_params: Collection[str] = (),
    excluded_domains: Collection[str] = (),
    tracked_prefixes: Collection[str] = (),
    pixel_url: str | None = None,
    trap_url: str | None = None,
) -> str:
    """The document with link ``i``'s href value replaced by ``hrefs[i]``; nothing else changes.

    ``i`` is the ``index`` of :func:`find_html_links` called with the same options; links not in
    ``hrefs`` keep their target. New values are escaped for the attribute (``&`` and the quote);
    an unquoted value gets double quotes. The marker attributes ``data-hc-notrack`` and
    ``data-hc-link`` are removed from link elements, with the whitespace before them. With
    ``pixel_url``, the open pixel is inserted right before the last ``</body>``, or at the end of
    a document without one; with ``trap_url``, the hidden trap link (:data:`TRAP_TEMPLATE`) just
    before it. Raises ValueError for an index that is not one of the links.
    """
    return splice(
        html,
        html_edits(
            html,
            hrefs,
            personal_params=personal_params,
            excluded_domains=excluded_domains,
            tracked_prefixes=tracked_prefixes,
            pixel_url=pixel_url,
            trap_url=trap_url,
        ),
    )


#: The sort key of an edit: its (start, end).
_SPAN = itemgetter(0, 1)


def html_edits(
    html: str,
    hrefs: Mapping[int, str],
    *,
    personal_params: Collection[str] = (),
    excluded_domains: Collection[str] = (),
    tracked_prefixes: Collection[str] = (),
    pixel_url: str | None = None,
    trap_url: str | None = None,
) -> list[tuple[int, int, str]]:
    """What :func:`rewrite_html` changes, as ``(start, end, new text)`` replacing
    ``html[start:end]``: in document order, never overlapping.

    For a caller that must re-encode what changed and nothing else (the relay's MIME splice).
    """
    options = _Options.of(personal_params, excluded_domains, tracked_prefixes)
    scan = _scan(html)
    links = _trackable(html, options) if hrefs else ()
    edits: list[tuple[int, int, str]] = [(s, e, "") for s, e in scan.markers]
    for index, value in hrefs.items():
        if not 0 <= index < len(links):
            raise ValueError(f"no link {index!r}: the document has {len(links)} trackable links")
        link = links[index][0]
        if link.quote:
            edits.append((link.start, link.end, _escape_attr(value, link.quote)))
        else:
            edits.append((link.start, link.end, '"' + _escape_attr(value, '"') + '"'))
    added = ""
    if trap_url is not None:
        added += TRAP_TEMPLATE.format(_escape_attr(trap_url, '"'))
    if pixel_url is not None:
        added += PIXEL_TEMPLATE.format(_escape_attr(pixel_url, '"'))
    if added:
        at = len(html) if scan.body is None else scan.body
        edits.append((at, at, added))
    edits.sort(key=_SPAN)
    return edits


# --------------------------------------------------------------------------------------------
# Text parts

_TEXT_URL = re.compile(
    r"<(?P<angled>(?:https?://|www\.)[^\s<>]+)>"
    r"|(?P<bare>(?<![A-Za-z0-9+.\-])https?://[^\s<>\"“”«»]+|(?<![\w@./+\-])www\.[^\s<>\"“”«»]+)",
    re.IGNORECASE,
)
_TRAILING = ".,;:!?'’\"”»"


def _trim(url: str) -> str:
    """``url`` without the punctuation that ends the sentence around it, and without a ``)`` or
    ``]`` that it does not open; linear in the URL's length, however much there is to trim."""
    end = len(url)
    unmatched = {")": url.count(")") - url.count("("), "]": url.count("]") - url.count("[")}
    while end:
        last = url[end - 1]
        if last in _TRAILING:
            end -= 1
        elif last in unmatched and unmatched[last] > 0:
            unmatched[last] -= 1
            end -= 1
        else:
            break
    return url[:end]


@lru_cache(maxsize=16)
def _text_links(text: str, options: _Options) -> tuple[Link, ...]:
    """The trackable URLs of a text part. Cached, as :func:`_scan`: the relay finds the links
    of a part once and then rewrites the part once per recipient."""
    spans: list[tuple[int, int, str, str]] = []
    for m in _TEXT_URL.finditer(text):
        if m.group("angled") is not None:
            start, written = m.start("angled"), m.group("angled")
        else:
            start, written = m.start("bare"), _trim(m.group("bare"))
        url = "http://" + written if written[:4].lower() == "www." else written
        target = options.target(url, None)
        if target is not None:
            spans.append((start, start + len(written), written, target))
    keys = _keys([(t, None, False) for *_, t in spans], options.personal)
    return tuple(
        _new_link(i, s, e, "", raw, t, "text", "", None, False, keys[i])
        for i, (s, e, raw, t) in enumerate(spans)
    )


def find_text_links(
    text: str,
    *,
    personal_params: Collection[str] = (),
    excluded_domains: Collection[str] = (),
    tracked_prefixes: Collection[str] = (),
) -> list[Link]:
    """The trackable URLs of a plain-text part, in order.

    Bare ``http://``/``https://`` URLs, ``www.`` URLs (whose ``url`` is ``http://www....`` while
    the span is the text as written) and URLs in ``<...>``. Trailing ``.,;:!?``, closing quotes
    and a ``)`` or ``]`` the URL does not open stay out of it. Exclusions and keys are those of
    :func:`find_html_links`.
    """
    return list(_text_links(text, _Options.of(personal_params, excluded_domains, tracked_prefixes)))


def rewrite_text(
    text: str,
    hrefs: Mapping[int, str],
    *,
    personal_params: Collection[str] = (),
    excluded_domains: Collection[str] = (),
    tracked_prefixes: Collection[str] = (),
) -> str:
    """The text with URL ``i`` (as :func:`find_text_links` numbers them) replaced by ``hrefs[i]``."""
    return splice(
        text,
        text_edits(
            text,
            hrefs,
            personal_params=personal_params,
            excluded_domains=excluded_domains,
            tracked_prefixes=tracked_prefixes,
        ),
    )


def text_edits(
    text: str,
    hrefs: Mapping[int, str],
    *,
    personal_params: Collection[str] = (),
    excluded_domains: Collection[str] = (),
    tracked_prefixes: Collection[str] = (),
) -> list[tuple[int, int, str]]:
    """What :func:`rewrite_text` changes, as :func:`html_edits` says it."""
    links = _text_links(text, _Options.of(personal_params, excluded_domains, tracked_prefixes))
    edits = []
    for index, value in hrefs.items():
        if not 0 <= index < len(links):
            raise ValueError(f"no link {index!r}: the text has {len(links)} trackable links")
        edits.append((links[index].start, links[index].end, value))
    edits.sort(key=_SPAN)
    return edits
