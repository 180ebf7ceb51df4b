"""Link finding and splicing (``hotclicks.rewrite``): each rule, then properties on generated mail.

The property tests build documents from pieces so that they know, independently of the module,
what the document looks like once the marker attributes are removed; the "undo" check then puts
the original href values back into the rewritten document and expects that text exactly: every
character outside the href values must survive a rewrite.
"""

from __future__ import annotations

import importlib.util
import re
import signal
from collections.abc import Callable
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotclicks.rewrite import (
    PIXEL_TEMPLATE,
    Link,
    canonical_url,
    find_html_links,
    find_text_links,
    rewrite_html,
    rewrite_text,
)

TRACKED = "https://t.example/"


def urls(html: str, **options: object) -> list[str]:
    return [link.url for link in find_html_links(html, **options)]  # type: ignore[arg-type]


def pixel(url: str) -> str:
    return PIXEL_TEMPLATE.format(url.replace("&", "&amp;").replace('"', "&quot;"))


# --------------------------------------------------------------------------------------------
# Finding links in HTML


def test_a_link_is_found_with_the_exact_span_of_its_value() -> None:
    html = '<p>Hi <a class="btn" href="https://shop.example/sale">Sale now</a></p>'
    [link] = find_html_links(html)
    assert link == Link(
        index=0,
        start=html.index("https://"),
        end=html.index('">Sale'),
        quote='"',
        raw="https://shop.example/sale",
        url="https://shop.example/sale",
        tag="a",
        label="Sale now",
        name=None,
        conditional=False,
        key="https://shop.example/sale#1",
    )
    assert html[link.start : link.end] == link.raw


def test_area_links_are_found_and_labelled_by_their_alt() -> None:
    html = '<map><AREA shape="rect" HREF="https://x.example/a" alt="North  wing"></map>'
    [link] = find_html_links(html)
    assert (link.tag, link.url, link.label) == ("area", "https://x.example/a", "North wing")


def test_a_greater_than_sign_inside_a_quoted_value_does_not_end_the_tag() -> None:
    html = (
        '<a title="a > b" data-x=\'>\' href="https://x.example/1">one</a>'
        '<div title="x>y" data-html="<a href=\'https://not.example/\'>">text</div>'
        '<img alt="<a href=https://not.example/>"><a href="https://x.example/2">two</a>'
    )
    assert urls(html) == ["https://x.example/1", "https://x.example/2"]


def test_links_in_comments_are_not_links() -> None:
    html = (
        '<!-- <a href="https://commented.example/">old</a> -->'
        '<!----><a href="https://x.example/1">1</a>'
        '<!-- a -- b --!><a href="https://x.example/2">2</a>'
        '<!--> <a href="https://x.example/3">abruptly closed comment before me</a>'
    )
    assert urls(html) == ["https://x.example/1", "https://x.example/2", "https://x.example/3"]


def test_an_unterminated_comment_hides_the_rest() -> None:
    html = '<a href="https://x.example/1">1</a><!-- <a href="https://x.example/2">2</a>'
    assert urls(html) == ["https://x.example/1"]


@pytest.mark.parametrize("element", ["script", "style", "title", "textarea", "SCRIPT", "Style"])
def test_raw_text_elements_hold_no_links(element: str) -> None:
    html = (
        f'<{element} type="x">var s = "<a href=\'https://raw.example/\'>"; /* <!-- */'
        f"</{element.lower()}  >"
        '<a href="https://x.example/after">after</a>'
    )
    assert urls(html) == ["https://x.example/after"]


def test_a_raw_text_element_ends_only_at_its_own_end_tag() -> None:
    html = '<style>a</styles><a href="https://raw.example/">x</a></style><a href="https://x.example/">y</a>'
    assert urls(html) == ["https://x.example/"]


def test_doctype_cdata_and_processing_instructions_are_skipped() -> None:
    html = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">'
        '<![CDATA[ <a href="https://cdata.example/">x</a> ]]>'
        '<a href="https://x.example/">y</a>'
    )
    assert urls(html) == ["https://x.example/"]


def test_cdata_and_processing_instructions_end_at_the_first_gt_as_in_html() -> None:
    # In HTML (not SVG) "<![CDATA[" and "<?" open a bogus comment that the first ">" closes.
    html = '<![CDATA[ a > <a href="https://x.example/1">1</a> ]]><? b > <a href="https://x.example/2">'
    assert urls(html) == ["https://x.example/1", "https://x.example/2"]


def test_quotes_count_only_where_the_tokenizer_opens_a_value() -> None:
    # A quote opens a value only right after "=": in a name or an unquoted value it is a
    # character, so the first ">" ends the tag; a fake link inside a real value stays text.
    html = (
        '<div a=b"c><a href="https://x.example/1">1</a>'
        '<div a="x"="y>" <a href="https://x.example/2">2</a>'
        "<img alt='<a href=\"https://fake.example/1\">'>"
        '<div\n  title="<a href=https://fake.example/2>"\n  class="x"><a href="https://x.example/3">3</a>'
        '</td title="<a href=\'https://fake.example/3\'>"><a href="https://x.example/4">4</a>'
        '<TD Class="a>b" STYLE=\'<a href="https://fake.example/4">\'><a href="https://x.example/5">5</a>'
    )
    assert urls(html) == [f"https://x.example/{n}" for n in range(1, 6)]


def test_comment_like_text_inside_values_and_comments_is_not_markup() -> None:
    html = (
        '<p title="<!--"><a href="https://x.example/1">1</a><p title="-->">'
        '<!-- <!--[if mso]><a href="https://fake.example/1">--><a href="https://x.example/2">2</a>'
        '<!--[if mso]--><a href="https://x.example/3">3</a>'
        '<!-- a -- b -!> <a href="https://fake.example/2"> --><a href="https://x.example/4">4</a>'
    )
    assert urls(html) == [f"https://x.example/{n}" for n in range(1, 5)]


def test_markers_after_a_value_holding_gt_are_read() -> None:
    html = (
        '<a href="https://x.example/1" title=">" data-hc-notrack>1</a>'
        '<a href="https://x.example/2" title="a>b" DATA-HC-LINK="hero">2</a>'
        '<a href="https://x.example/3" title="data-hc-link">3</a>'
    )
    [hero, plain] = find_html_links(html)
    assert (hero.url, hero.name, plain.url, plain.name) == (
        "https://x.example/2", "hero", "https://x.example/3", None
    )
    out = rewrite_html(html, {})
    assert 'title="a>b">2' in out and "data-hc-notrack" not in out.lower()


def test_href_spelling_quoting_and_spacing() -> None:
    html = (
        "<A HREF = 'https://x.example/single'>1</A>"
        "<a\nhref\n=\nhttps://x.example/unquoted?a=1 class=x>2</a>"
        '<a data-href="https://no.example/" href="https://x.example/double">3</a>'
        '<a href="https://x.example/first" href="https://x.example/second">4</a>'
        "<a name=top>no href</a><abbr href='https://no.example/'>not a link tag</abbr>"
    )
    links = find_html_links(html)
    assert [(link.url, link.quote) for link in links] == [
        ("https://x.example/single", "'"),
        ("https://x.example/unquoted?a=1", ""),
        ("https://x.example/double", '"'),
        ("https://x.example/first", '"'),
    ]
    assert all(html[link.start : link.end] == link.raw for link in links)


def test_newlines_and_spaces_inside_an_href_are_dropped_from_the_url() -> None:
    html = '<a href="  \n  https://x.example/long/path\n?utm_source=news&amp;\tutm_medium=email\n  ">x</a>'
    [link] = find_html_links(html)
    assert link.raw == html[html.index("  \n") : html.index('">x')]
    assert link.url == "https://x.example/long/path?utm_source=news&utm_medium=email"


def test_entities_are_decoded_in_the_url_and_never_left_as_amp() -> None:
    html = (
        '<a href="https://x.example/?a=1&amp;b=2&AMP;c=3&#38;d=4">1</a>'
        '<a href="https&#58;//x.example/&#x2F;p?q=&quot;x&quot;">2</a>'
        '<a href="https://x.example/?lang=fr&copy=2&not;">3</a>'
    )
    links = find_html_links(html)
    assert [link.url for link in links] == [
        "https://x.example/?a=1&b=2&c=3&d=4",
        'https://x.example//p?q="x"',
        # In an attribute a legacy reference without ";" followed by "=" stays as written.
        "https://x.example/?lang=fr&copy=2¬",
    ]
    assert all("&amp;" not in link.url for link in links)


def test_relative_hrefs_resolve_against_base_href_wherever_base_is() -> None:
    html = (
        '<a href="offers/spring?x=1">1</a><a href="//cdn.example/p">2</a>'
        '<a href="#top">3</a><a href="">4</a><a href="mailto:a@b.example">5</a>'
        '<head><base target="_blank"><base href="https://base.example/news/"></head>'
    )
    assert urls(html) == ["https://base.example/news/offers/spring?x=1", "https://cdn.example/p"]


def test_relative_hrefs_are_left_alone_without_base() -> None:
    html = '<a href="offers/spring">1</a><a href="//cdn.example/p">2</a><a href="www.x.example">3</a>'
    assert urls(html) == []
    html = '<base href="page.html"><a href="offers/spring">1</a>'  # a relative base is no base
    assert urls(html) == []


@pytest.mark.parametrize(
    "href",
    [
        "mailto:someone@example.com",
        "MAILTO:someone@example.com",
        "tel:+33123456789",
        "sms:+33123456789",
        "javascript:void(0)",
        "data:text/html,hello",
        "ftp://files.example/x",
        "#top",
        "#",
        "",
        "   ",
        "http://",
        "https://",
        "http:///path",
        "https://?q=1",
        "{{action_url}}",
        "https://x.example/?u={{ user.id }}",
        "{% url 'unsubscribe' %}",
        "*|UNSUB|*",
        "https://x.us1.list-manage.com/profile?u=*|UNIQID|*",
        "%%view_email_url%%",
        "https://x.example/?e=%%emailaddr%%",
        "[unsubscribe]",
        "https://x.example/[TRACKING]",
        "<%= unsubscribe_url %>",
        "${unsubscribeUrl}",
        "https://x.example/%7B%7Bid%7D%7D",
    ],
)
def test_untracked_hrefs(href: str) -> None:
    assert urls(f'<a href="{href}">x</a>') == []


def test_an_ipv6_host_is_not_a_placeholder() -> None:
    assert urls('<a href="http://[2001:db8::1]/x">x</a>') == ["http://[2001:db8::1]/x"]


def within_seconds(seconds: float, work: Callable[[], object]) -> object:
    """``work()``, interrupted by an alarm signal when it is still working after ``seconds``.

    Not a speed measure: the bound is far above what linear work takes on the tests' inputs, and
    far below what quadratic work on them takes (minutes). A signal, not a thread: a regular
    expression search holds the interpreter's lock until it ends, but the alarm interrupts it.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"still working after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return work()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# A hostile message's href: an opener repeated, with its closer at the end or nowhere. A search
# from each opener to the end of the href made the time taken grow with the square of its length.
HOSTILE_SIZE = 200_000
HOSTILE_PATHS = {  # a name: (the path of the href, what closes its placeholder)
    "{": ("{" * HOSTILE_SIZE, "}}"),
    "{%": ("{%" * (HOSTILE_SIZE // 2), "%}"),
    "*|": ("*|" * (HOSTILE_SIZE // 2), ""),  # "*|*|" holds its own closer: always a placeholder
    "*|-": ("*|-" * (HOSTILE_SIZE // 3), "|*"),
    "%%": ("%%" * (HOSTILE_SIZE // 2), "name%%"),  # "%%%%" alone is no placeholder
    "${": ("${" * (HOSTILE_SIZE // 2), "}"),
    "<%": ("<%" * (HOSTILE_SIZE // 2), "%>"),
    "%7B%7B": ("%7B%7B" * (HOSTILE_SIZE // 6), "%7D%7D"),
    "%7b%7B": ("%7b%7B" * (HOSTILE_SIZE // 6), "%7d%7D"),
    "[": ("[" * HOSTILE_SIZE, "]"),
    # A run of scheme characters, read before an IPv6 host ("[") is looked for.
    "aaa[": ("a" * HOSTILE_SIZE + "[", "]"),
}



@pytest.mark.parametrize("tail", [")", "]", ".", "),", ")].!"])
def test_a_text_url_ending_in_a_long_run_of_punctuation_is_trimmed_in_linear_time(tail: str) -> None:
    """Trimming one character at a time and counting brackets each time took the square of the
    run's length (35 s for 200,000 characters of ")"): a hostile text part stalled the relay."""
    run = tail * (HOSTILE_SIZE // len(tail))
    links = within_seconds(10, lambda: find_text_links(f"See https://x.example/a(b){run} now"))
    assert [link.url for link in links] == ["https://x.example/a(b)"]

@pytest.mark.parametrize("name", HOSTILE_PATHS)
def test_an_href_full_of_placeholder_openers_is_decided_in_linear_time(name: str) -> None:
    path, closer = HOSTILE_PATHS[name]
    url = "https://x.example/" + path
    closed = url + closer
    html = (
        f'<a href="{url}">1</a><a class="b" href="{url}">2</a>'
        f'<a href="{closed}">3</a><a class="b" href="{closed}">4</a>'
    )
    tracked = [] if name == "*|" else [url]
    links = within_seconds(10, lambda: find_html_links(html))
    assert [link.url for link in links] == tracked * 2  # type: ignore[attr-defined]
    if "<" not in path:  # a "<" ends a URL in text
        text = within_seconds(10, lambda: find_text_links(f"See {url} or {closed}"))
        assert [link.url for link in text] == tracked  # type: ignore[attr-defined]


@pytest.mark.parametrize("href", ["http://", " HTTPS:// ", "{{action_url}}", "*|UNSUB|*", "%%unsub%%"])
def test_untracked_hrefs_anywhere_in_a_link_leave_the_other_links_and_markers_alone(
    href: str,
) -> None:
    html = (
        f'<a class="b" href="{href}">1</a><area alt="x" href=\'{href}\'>'
        f'<!--[if mso]><v:roundrect href="{href}" arcsize="5%"></v:roundrect><![endif]-->'
        f'<a href="{href}" data-hc-link="named">2</a>'
        f'<a title="t" href="{href}" data-hc-notrack>3</a>'
        '<a href="https://shop.example/">4</a>'
    )
    links = find_html_links(html)
    assert [(link.index, link.url, link.key, link.label) for link in links] == [
        (0, "https://shop.example/", "https://shop.example/#1", "4")
    ]
    assert rewrite_html(html, {0: TRACKED}) == (
        html.replace(' data-hc-link="named"', "")
        .replace(" data-hc-notrack", "")
        .replace("https://shop.example/", TRACKED)
    )


def test_a_placeholder_in_the_user_of_an_ipv6_host_does_not_hide_the_link() -> None:
    # The IPv6 host is set aside before placeholders are looked for, even when it is written
    # with a character reference.
    for host in ("[2001:db8::1]", "&#91;2001:db8::1]"):
        html = f'<a class="b" href="http://{{{{user}}}}@{host}/x">x</a>'
        assert urls(html) == ["http://{{user}}@[2001:db8::1]/x"]


def test_excluded_domains_cover_the_domain_and_its_subdomains_only() -> None:
    html = (
        '<a href="https://example.com/a">1</a><a href="https://WWW.Example.com./b">2</a>'
        '<a href="https://notexample.com/c">3</a><a href="https://user@example.com:8080/d">4</a>'
        '<a href="https://example.org/e">5</a>'
    )
    assert urls(html, excluded_domains=[".Example.COM"]) == [
        "https://notexample.com/c",
        "https://example.org/e",
    ]


def test_already_tracked_links_are_left_alone() -> None:
    html = '<a href="https://t.example/c/abc">1</a><a href="https://x.example/">2</a>'
    assert urls(html, tracked_prefixes=[TRACKED]) == ["https://x.example/"]


def test_links_marked_notrack_are_left_alone() -> None:
    html = '<a data-hc-notrack href="https://x.example/1">1</a><a href="https://x.example/2">2</a>'
    assert urls(html) == ["https://x.example/2"]


def test_other_urls_of_the_document_are_never_links() -> None:
    html = (
        '<link href="https://fonts.example/css?family=A&amp;display=swap" rel="stylesheet">'
        '<base href="https://base.example/">'
        '<img src="https://img.example/a.png"><table background="https://img.example/bg.png">'
        '<td style="background:url(https://img.example/c.png)">'
        '<v:roundrect href="https://outside.example/">VML outside a conditional comment</v:roundrect>'
    )
    assert urls(html) == []


def test_an_unterminated_tag_ends_the_document() -> None:
    html = '<a href="https://x.example/1">1</a><div title="never closed><a href="https://x.example/2">'
    assert urls(html) == ["https://x.example/1"]
    assert urls('<a href="https://x.example/3"') == []


# Outlook conditional comments


BUTTON = (
    "<!--[if mso]>"
    '<v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" href="https://shop.example/sale" '
    'style="height:40px" arcsize="10%" fillcolor="#444444"><w:anchorlock/>'
    "<center>Shop the sale</center></v:roundrect>"
    "<![endif]-->"
    "<!--[if !mso]><!-->"
    '<a href="https://shop.example/sale" class="button">Shop the sale</a>'
    "<!--<![endif]-->"
)


def test_links_inside_conditional_comments_are_found_and_marked() -> None:
    links = find_html_links(BUTTON)
    assert [(link.tag, link.conditional, link.label) for link in links] == [
        ("v:roundrect", True, "Shop the sale"),
        ("a", False, "Shop the sale"),
    ]


def test_conditional_comment_content_is_markup() -> None:
    html = (
        '<!--[if (gte mso 9)|(IE)]><table><tr><td><a href="https://x.example/ie">ie</a>'
        '<v:rect href="https://x.example/rect" stroke="f"><v:fill type="tile" src="https://img.example/bg.png"/>'
        "</v:rect><!-- <a href=\"https://x.example/commented\"> --><style><a href='https://x.example/css'></style>"
        '<v:oval href="https://x.example/oval"/><![endif]-->'
        '<!--[IF MSO]><v:shape HREF="https://x.example/shape"></v:shape><![ENDIF]-->'
        '<a href="https://x.example/after">after</a>'
    )
    links = find_html_links(html)
    assert [(link.url, link.conditional) for link in links] == [
        ("https://x.example/ie", True),
        ("https://x.example/rect", True),
        ("https://x.example/oval", True),
        ("https://x.example/shape", True),
        ("https://x.example/after", False),
    ]
    assert links[2].label == ""  # a self-closed VML element has no text


def test_a_conditional_comment_closed_like_a_downlevel_revealed_one_ends_there() -> None:
    # Real mail (Mailgun's templates) closes "<!--[if mso]>" with "<!--<![endif]-->".
    html = (
        '<!--[if mso]><table><tr><td><a href="https://x.example/1">1</a><!--<![endif]-->'
        '<a href="https://x.example/2">2</a>'
    )
    assert [(link.url, link.conditional) for link in find_html_links(html)] == [
        ("https://x.example/1", True),
        ("https://x.example/2", False),
    ]


def test_downlevel_revealed_content_is_ordinary_markup() -> None:
    html = (
        '<!--[if !mso]><!-- --><a href="https://x.example/1">1</a><!--<![endif]-->'
        '<!--[if !mso | IE]><!----><a href="https://x.example/2">2</a><!--<![endif]-->'
        '<!--[if mso]><!--><a href="https://x.example/3">3</a><!--<![endif]-->'
        # Not downlevel-revealed: a conditional comment whose content starts with a comment.
        '<!--[if mso]><!-- button --><v:rect href="https://x.example/4"></v:rect><![endif]-->'
    )
    assert [(link.url, link.conditional) for link in find_html_links(html)] == [
        ("https://x.example/1", False),
        ("https://x.example/2", False),
        ("https://x.example/3", False),
        ("https://x.example/4", True),
    ]


# Keys


def test_the_vml_button_and_its_twin_share_one_key() -> None:
    links = find_html_links(BUTTON + '<a href="https://shop.example/sale">again</a>')
    assert [link.key for link in links] == [
        "https://shop.example/sale#1",
        "https://shop.example/sale#1",
        "https://shop.example/sale#2",
    ]


def test_two_links_to_one_url_are_two_occurrences() -> None:
    html = '<a href="https://x.example/">top</a><a href="https://y.example/">y</a><a href="https://x.example/">bottom</a>'
    assert [link.key for link in find_html_links(html)] == [
        "https://x.example/#1",
        "https://y.example/#1",
        "https://x.example/#2",
    ]


def test_a_conditional_link_without_a_following_twin_has_its_own_key() -> None:
    html = (
        '<a href="https://x.example/">before</a>'  # before: not a twin
        '<!--[if mso]><v:roundrect href="https://x.example/"></v:roundrect><![endif]-->'
        '<!--[if mso]><v:roundrect href="https://x.example/"></v:roundrect><![endif]-->'
        '<a href="https://x.example/">twin of the second VML button</a>'
        '<!--[if mso]><v:roundrect href="https://y.example/"></v:roundrect><![endif]-->'
        '<a href="https://x.example/">another target comes first: no twin</a>'
        '<a href="https://y.example/">y</a>'
    )
    assert [link.key for link in find_html_links(html)] == [
        "https://x.example/#1",
        "https://x.example/#2",
        "https://x.example/#3",
        "https://x.example/#3",
        "https://y.example/#1",
        "https://x.example/#4",
        "https://y.example/#1",
    ]


def test_named_links_are_keyed_by_their_name() -> None:
    html = (
        '<a href="https://x.example/" data-hc-link="hero &amp; banner">1</a>'
        '<a href="https://x.example/">2</a>'
        '<!--[if mso]><v:roundrect href="https://y.example/"></v:roundrect><![endif]-->'
        '<a href="https://y.example/" data-hc-link="cta">3</a>'
    )
    links = find_html_links(html)
    assert [(link.name, link.key) for link in links] == [
        ("hero & banner", "hero & banner"),
        (None, "https://x.example/#2"),
        (None, "cta"),
        ("cta", "cta"),
    ]


def test_personal_params_are_left_out_of_the_key_but_not_the_url() -> None:
    html = (
        '<a href="https://x.example/p?uid=123&amp;x=1">1</a>'
        '<a href="https://x.example/p?x=1&amp;uid=456">2</a>'
    )
    links = find_html_links(html, personal_params={"uid"})
    assert [link.url for link in links] == [
        "https://x.example/p?uid=123&x=1",
        "https://x.example/p?x=1&uid=456",
    ]
    assert [link.key for link in links] == ["https://x.example/p?x=1#1", "https://x.example/p?x=1#2"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://x.example/p?uid=1&x=1&y=2", "https://x.example/p?x=1&y=2"),
        ("https://x.example/p?b=2&uid=1&a=1#frag", "https://x.example/p?b=2&a=1#frag"),
        ("https://x.example/p?uid=1&email=a%40b", "https://x.example/p"),
        ("https://x.example/p?u%69d=1&x", "https://x.example/p?x"),
        ("https://x.example/p?uidx=1", "https://x.example/p?uidx=1"),
        ("https://x.example/p#?uid=1", "https://x.example/p#?uid=1"),
        ("https://x.example/p", "https://x.example/p"),
    ],
)
def test_canonical_url(url: str, expected: str) -> None:
    assert canonical_url(url, ["uid", "email"]) == expected


# Labels


def test_labels() -> None:
    html = (
        '<a href="https://x.example/1">  Read <b>the</b>\n full&nbsp;story&hellip; </a>'
        '<a href="https://x.example/2"><img src="logo.png" alt="Our logo"></a>'
        f'<a href="https://x.example/3">{"word " * 100}</a>'
        '<a href="https://x.example/4"></a>'
    )
    labels = [link.label for link in find_html_links(html)]
    assert labels[:2] == ["Read the full story…", "Our logo"]
    assert len(labels[2]) == 200 and labels[2].startswith("word word")
    assert labels[3] == ""


def test_an_image_alt_is_found_after_any_separators_between_attributes() -> None:
    # Templates often write one attribute a line, indented with tabs.
    html = (
        '<a href="https://x.example/1"><img src="fall.png"\n\t\t\talt="Fall"></a>'
        "<a href='https://x.example/2'><img width=600\r\n  /ALT='Winter sale'\f alt=\"2nd\"></a>"
        '<a href="https://x.example/3"><img src=a.png alt=Spring></a>'
        '<a href="https://x.example/4"><img src="a.png"\n\t></a><img\n\talt="Not in the link">'
    )
    labels = [link.label for link in find_html_links(html)]
    assert labels == ["Fall", "Winter sale", "Spring", ""]


# --------------------------------------------------------------------------------------------
# Rewriting HTML


def test_rewriting_changes_only_the_values() -> None:
    html = (
        "<A HREF = 'https://x.example/1'>1</A>"
        "<a href=https://x.example/2>2</a>"
        '<a href="https://x.example/3?a=1&amp;b=2">3</a>'
    )
    out = rewrite_html(
        html, {0: "https://t.example/it's", 1: 'https://t.example/?q="x"&r=1', 2: "https://t.example/3"}
    )
    assert out == (
        "<A HREF = 'https://t.example/it&#39;s'>1</A>"
        '<a href="https://t.example/?q=&quot;x&quot;&amp;r=1">2</a>'
        '<a href="https://t.example/3">3</a>'
    )
    assert urls(out) == ["https://t.example/it's", 'https://t.example/?q="x"&r=1', "https://t.example/3"]


def test_links_not_in_the_mapping_stay_as_they_are() -> None:
    html = '<a href="https://x.example/1">1</a><a href="https://x.example/2">2</a>'
    assert rewrite_html(html, {1: "https://t.example/2"}) == html.replace("x.example/2", "t.example/2")
    assert rewrite_html(html, {}) == html


def test_an_index_that_is_not_a_link_is_an_error() -> None:
    with pytest.raises(ValueError, match="no link 2"):
        rewrite_html('<a href="https://x.example/">x</a><a href="#">y</a>', {2: "https://t.example/"})


def test_indexes_follow_the_same_options() -> None:
    html = '<a href="https://skip.example/">1</a><a href="https://x.example/">2</a>'
    out = rewrite_html(html, {0: "https://t.example/0"}, excluded_domains=["skip.example"])
    assert out == '<a href="https://skip.example/">1</a><a href="https://t.example/0">2</a>'


def test_marker_attributes_are_removed_from_link_elements() -> None:
    html = (
        '<a data-hc-notrack href="mailto:x@y.example">1</a>'
        '<a href="https://x.example/" data-hc-link="hero">2</a>'
        "<a\n  DATA-HC-LINK='cta'\n  href=\"https://y.example/\">3</a>"
        '<a data-hc-link="x"href="https://z.example/">4</a>'
        '<!--[if mso]><v:rect href="https://x.example/" data-hc-notrack=""></v:rect><![endif]-->'
        '<div data-hc-link="not a link element">5</div>'
        '<a data-hc-link="no href">6</a><AREA DATA-HC-NOTRACK alt=x>'
    )
    assert rewrite_html(html, {}) == (
        '<a href="mailto:x@y.example">1</a>'
        '<a href="https://x.example/">2</a>'
        '<a\n  href="https://y.example/">3</a>'
        '<a href="https://z.example/">4</a>'
        '<!--[if mso]><v:rect href="https://x.example/"></v:rect><![endif]-->'
        '<div data-hc-link="not a link element">5</div>'
        "<a>6</a><AREA alt=x>"
    )


def test_the_pixel_goes_before_the_last_body_end_tag() -> None:
    url = "https://t.example/o/abc?x=1&y=2"
    html = "<html><body><p>Hi</p><!-- </body> --></BODY ></html>\n<!-- </body> -->"
    out = rewrite_html(html, {}, pixel_url=url)
    assert out == html.replace("</BODY >", pixel(url) + "</BODY >")
    assert 'src="https://t.example/o/abc?x=1&amp;y=2"' in out


def test_the_pixel_goes_at_the_end_without_body_end_tag() -> None:
    html = "<p>A fragment</p>"
    assert rewrite_html(html, {}, pixel_url="https://t.example/o") == html + pixel("https://t.example/o")


def test_a_real_newsletter_is_rewritten_in_place() -> None:
    html = (
        "<!DOCTYPE html>\r\n<html><head><meta charset=\"utf-8\"><title>News &amp; offers</title>\r\n"
        "<style>a{color:red}</style></head>\r\n<body>\r\n"
        + BUTTON
        + '\r\n<p>Read <a href="https://blog.example/spring?utm_source=news&amp;utm_medium=email">our blog</a>'
        ' or <a href="mailto:help@shop.example">write</a>.</p>\r\n</body></html>\r\n'
    )
    links = find_html_links(html)
    out = rewrite_html(html, {link.index: f"{TRACKED}{link.index}" for link in links})
    expected = html
    for link in reversed(links):
        expected = expected[: link.start] + f"{TRACKED}{link.index}" + expected[link.end :]
    assert out == expected
    assert [link.key for link in links] == [
        "https://shop.example/sale#1",
        "https://shop.example/sale#1",
        "https://blog.example/spring?utm_source=news&utm_medium=email#1",
    ]


# --------------------------------------------------------------------------------------------
# Text parts


def text_urls(text: str, **options: object) -> list[tuple[str, str]]:
    return [(link.raw, link.url) for link in find_text_links(text, **options)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("See https://x.example/a.", "https://x.example/a"),
        ("See https://x.example/a, then", "https://x.example/a"),
        ("Really? https://x.example/a?!", "https://x.example/a"),
        ("(see https://x.example/a)", "https://x.example/a"),
        ("(https://en.example/wiki/Foo_(bar))", "https://en.example/wiki/Foo_(bar)"),
        ("[https://x.example/a]", "https://x.example/a"),
        ('"https://x.example/a"', "https://x.example/a"),
        ("'https://x.example/a'", "https://x.example/a"),
        ("“https://x.example/a”", "https://x.example/a"),
        ("«https://x.example/a»", "https://x.example/a"),
        ("‘https://x.example/a’", "https://x.example/a"),
        ("at https://x.example/a:", "https://x.example/a"),
        ("HTTPS://X.EXAMPLE/A;", "HTTPS://X.EXAMPLE/A"),
        ("<https://x.example/a.b,c>", "https://x.example/a.b,c"),
    ],
)
def test_text_urls_leave_punctuation_and_quotes_out(text: str, raw: str) -> None:
    [(found, url)] = text_urls(text)
    assert found == raw == url


def test_www_urls_are_found_and_resolved_to_http() -> None:
    text = "Visit www.shop.example/sale. Not an address: me@www.shop.example, nor wwwx.example."
    [link] = find_text_links(text)
    assert (link.raw, link.url, link.tag, link.quote) == (
        "www.shop.example/sale",
        "http://www.shop.example/sale",
        "text",
        "",
    )
    assert text[link.start : link.end] == link.raw


def test_text_exclusions() -> None:
    text = (
        "Write to mailto:a@b.example or call tel:123. https:// alone, http://#x,\n"
        "https://x.us1.list-manage.com/unsubscribe?u=*|UNIQID|* and %%unsub%% and\n"
        "https://t.example/c/1 https://mail.example/x https://ok.example/?uid=7&x=1"
    )
    links = find_text_links(
        text, excluded_domains=["mail.example"], tracked_prefixes=[TRACKED], personal_params=["uid"]
    )
    assert [(link.url, link.key) for link in links] == [
        ("https://ok.example/?uid=7&x=1", "https://ok.example/?x=1#1")
    ]


def test_text_rewrite_replaces_the_written_spans() -> None:
    text = "Sale: www.shop.example/sale!\nBlog: <https://blog.example/a>\nAgain www.shop.example/sale."
    links = find_text_links(text)
    assert [link.key for link in links] == [
        "http://www.shop.example/sale#1",
        "https://blog.example/a#1",
        "http://www.shop.example/sale#2",
    ]
    out = rewrite_text(text, {0: "https://t.example/0", 2: "https://t.example/2"})
    assert out == (
        "Sale: https://t.example/0!\nBlog: <https://blog.example/a>\nAgain https://t.example/2."
    )
    with pytest.raises(ValueError):
        rewrite_text(text, {3: "https://t.example/3"})


def test_options_must_be_collections_of_strings() -> None:
    with pytest.raises(TypeError):
        find_html_links("", excluded_domains="example.com")


# --------------------------------------------------------------------------------------------
# Properties over generated documents


def check_undo(
    html: str,
    without_markers: str,
    chosen: list[int] | None = None,
    pixel_url: str | None = None,
    **options: object,
) -> str:
    """Rewrite ``chosen`` links (all by default), then put the original values back.

    Rescanning the output finds the rewritten links at the new values, in order; putting each
    link's raw value back where the new value is (and the quotes an unquoted value gained away)
    and the pixel out gives ``without_markers`` exactly: the input less its marker attributes.
    """
    links = find_html_links(html, **options)  # type: ignore[arg-type]
    for link in links:
        assert html[link.start : link.end] == link.raw
        assert link.url.lower().startswith(("http://", "https://"))
        if link.quote:
            assert html[link.start - 1] == html[link.end] == link.quote
    chosen = list(range(len(links))) if chosen is None else chosen
    mapping = {i: f"{TRACKED}{i}" for i in chosen}
    out = rewrite_html(html, mapping, pixel_url=pixel_url, **options)  # type: ignore[arg-type]
    rescanned = [
        link
        for link in find_html_links(out, **options)  # type: ignore[arg-type]
        if link.url.startswith(TRACKED)
    ]
    assert [link.url for link in rescanned] == [mapping[i] for i in sorted(mapping)]
    pieces = []
    position = 0
    for new, i in zip(rescanned, sorted(mapping)):
        start, end = new.start, new.end
        if links[i].quote == "":
            assert new.quote == '"'
            start, end = start - 1, end + 1
        else:
            assert new.quote == links[i].quote
        pieces += [out[position:start], links[i].raw]
        position = end
    pieces.append(out[position:])
    undone = "".join(pieces)
    if pixel_url is not None:
        at = undone.rfind(pixel(pixel_url))
        assert at >= 0
        undone = undone[:at] + undone[at + len(pixel(pixel_url)) :]
    assert undone == without_markers
    return out


# Pieces of documents: each strategy draws a pair (the piece, the piece without marker attributes).
Pair = tuple[str, str]

URL_VALUES = st.sampled_from(
    [
        "https://shop.example/sale",
        "https://shop.example/sale?uid=42&amp;utm_source=news",
        "http://blog.example/a>b",
        "HTTPS://UP.EXAMPLE/X",
        "https://skip.example/x",
        "\n  https://wrapped.example/path\n  ",
        "https://x.example/?a=1&b=2&copy=3&#38;c",
        "/relative/path",
        "mailto:a@b.example",
        "#top",
        "",
        "http://",
        "{{ url }}",
        "*|UNSUB|*",
        "javascript:alert('x')",
    ]
)
def tokens(choices: list[str], max_size: int = 8) -> st.SearchStrategy[str]:
    """Strings made of the given pieces."""
    return st.lists(st.sampled_from(choices), max_size=max_size).map("".join)


TEXT = tokens(list("ab \n\t&;>\"'=/é€😀") + ["&amp;", "< ", "&lt;"])
WS = st.text(alphabet=" \t\n\r\f", min_size=1, max_size=3)


@st.composite
def attribute(draw: st.DrawFn, *, value_alphabet: str = "ab=x/ <>") -> str:
    name = draw(st.sampled_from(["class", "style", "title", "data-x", "ALT", "id"]))
    value = draw(st.text(alphabet=value_alphabet, max_size=8))
    quote = draw(st.sampled_from(['"', "'", ""]))
    if quote:
        value = value.replace(quote, "")
    else:
        value = re.sub(r"[\s>\"']", "", value) or "v"
    return f"{draw(WS)}{name}={quote}{value}{quote}"


@st.composite
def link_tag(draw: st.DrawFn, *, conditional: bool) -> Pair:
    names = ["a", "A", "area"] + (["v:roundrect", "v:rect", "V:Oval"] if conditional else [])
    tag = draw(st.sampled_from(names))
    value = draw(URL_VALUES)
    quote = draw(st.sampled_from(['"', "'", ""]))
    if not quote:
        # An empty unquoted value would take the next attribute as its value.
        value = re.sub(r"[\s>\"']", "", value) or "x"
    elif quote == "'":
        value = value.replace("'", "")
    before, after = draw(st.sampled_from([("=", ""), (" = ", ""), ("\n=\n", "")]))
    href = f"{draw(WS)}{draw(st.sampled_from(['href', 'HREF', 'Href']))}{before}{quote}{value}{quote}{after}"
    attrs: list[Pair] = [(a, a) for a in draw(st.lists(attribute(), max_size=2))]
    attrs.append((href, href))
    if draw(st.booleans()):
        marker = draw(
            st.sampled_from(
                ["data-hc-notrack", 'data-hc-link="cta"', "DATA-HC-LINK='a &amp; b'", "data-hc-link=x"]
            )
        )
        attrs.append((draw(WS) + marker, ""))
    order = draw(st.permutations(range(len(attrs))))
    opening = "".join(attrs[i][0] for i in order)
    bare = "".join(attrs[i][1] for i in order)
    end = draw(st.sampled_from([">", " >", " />"]))  # "/>" would end an unquoted value
    content = draw(TEXT)
    closing = f"</{tag}>" if draw(st.booleans()) else ""
    return (
        f"<{tag}{opening}{end}{content}{closing}",
        f"<{tag}{bare}{end}{content}{closing}",
    )


def _plain(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[Pair]:
    return strategy.map(lambda s: (s, s))


HIDDEN = st.sampled_from(['<a href="https://hidden.example/">x</a>', "<a href=https://hidden.example/>", "a > b"])
OTHER_TAG = st.builds(
    lambda name, attrs, end: f"<{name}{''.join(attrs)}{end}",
    st.sampled_from(["div", "TD", "img", "/td", "/a", "span", "abbr", "base", "link", "body", "/p"]),
    st.lists(attribute(value_alphabet="ab <>/=\"'"), max_size=3),
    st.sampled_from([">", "/>", " >"]),
)
COMMENT = st.builds(
    lambda a, b: f"<!--{a}{b}-->",
    st.sampled_from([" ", "x", " <!-- "]),
    st.lists(st.one_of(TEXT, HIDDEN), max_size=3).map("".join).filter(
        lambda s: "--" not in s and not s.endswith("-")
    ),
)
RAW = st.builds(
    lambda name, inner: f"<{name}>{inner}</{name}>",
    st.sampled_from(["script", "style", "title", "textarea", "STYLE"]),
    st.lists(st.one_of(TEXT, HIDDEN, st.just("<!--")), max_size=3).map("".join),
)
MISC = st.sampled_from(
    [
        "<!DOCTYPE html>",
        '<?xml version="1.0"?>',
        "<![CDATA[ <a href='https://hidden.example/'> ]]>",  # hidden: the first ">" ends it
        "</body>",
        "</BODY >",
        "<br/>",
        "<o:p></o:p>",
        "<w:anchorlock/>",
    ]
)


def pieces(*, conditional: bool) -> st.SearchStrategy[Pair]:
    links = link_tag(conditional=conditional)
    return st.one_of(
        links,
        links,
        links,
        _plain(TEXT),
        _plain(OTHER_TAG),
        _plain(COMMENT),
        _plain(RAW),
        _plain(MISC),
    )


def join(pairs: list[Pair]) -> Pair:
    return "".join(p[0] for p in pairs), "".join(p[1] for p in pairs)


CONDITIONAL = st.builds(
    lambda opener, inner: (f"{opener}{inner[0]}<![endif]-->", f"{opener}{inner[1]}<![endif]-->"),
    st.sampled_from(["<!--[if mso]>", "<!--[if (gte mso 9)|(IE)]>", "<!--[if mso | IE]>"]),
    st.lists(pieces(conditional=True), max_size=5).map(join),
)
REVEALED = st.builds(
    lambda opener, inner: (f"{opener}{inner[0]}<!--<![endif]-->", f"{opener}{inner[1]}<!--<![endif]-->"),
    st.sampled_from(["<!--[if !mso]><!-->", "<!--[if !mso]><!-- -->"]),
    st.lists(pieces(conditional=False), max_size=4).map(join),
)
DOCUMENTS = st.lists(st.one_of(pieces(conditional=False), CONDITIONAL, REVEALED), max_size=10).map(join)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "excluded_domains": st.just(["skip.example"]),
        "personal_params": st.just({"uid"}),
        "tracked_prefixes": st.just(["https://shop.example/sale?"]),
    },
)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(DOCUMENTS, OPTIONS, st.data())
def test_property_rewriting_is_exactly_reversible(
    document: Pair, options: dict[str, object], data: st.DataObject
) -> None:
    html, without_markers = document
    count = len(find_html_links(html, **options))  # type: ignore[arg-type]
    chosen = data.draw(st.lists(st.integers(0, max(count - 1, 0)), unique=True)) if count else []
    pixel_url = data.draw(st.sampled_from([None, "https://t.example/o?a=1&b=\"2\""]))
    check_undo(html, without_markers, chosen, pixel_url, **options)


@settings(PROPERTY, max_examples=60)
@given(DOCUMENTS)
def test_property_keys_are_shared_only_by_a_conditional_link_and_its_twin(document: Pair) -> None:
    html = document[0]
    links = find_html_links(html)
    assert [link.index for link in links] == list(range(len(links)))
    by_key: dict[str, list[Link]] = {}
    for link in links:
        by_key.setdefault(link.key, []).append(link)
    for key, group in by_key.items():
        if all(link.name is None for link in group):
            assert len(group) <= 2, key
            if len(group) == 2:
                first, second = group
                assert first.conditional and not second.conditional
                assert canonical_url(first.url, ()) == canonical_url(second.url, ())


@settings(max_examples=200, deadline=None)
@given(
    tokens(
        list("<>!-/?[]'\"= abhrefABHREF:")
        + ["<a ", "href=", "<!--", "-->", "<![endif]", "<!--[if mso]>", "http://x.example"]
        + ["<script>", "</script>", "<v:rect ", "<base href=", "</body>"],
        max_size=40,
    )
)
def test_property_never_raises_on_any_markup(html: str) -> None:
    links = find_html_links(html)
    out = rewrite_html(html, {link.index: f"{TRACKED}{link.index}" for link in links}, pixel_url=TRACKED)
    assert isinstance(out, str)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_property_never_raises_on_any_text(text: str) -> None:
    find_html_links(text)
    rewrite_html(text, {}, pixel_url=TRACKED)
    links = find_text_links(text)
    rewrite_text(text, {link.index: TRACKED for link in links})


TEXT_PIECES = st.one_of(
    st.sampled_from(
        [
            "https://x.example/a",
            "http://x.example/b?c=1&d=2",
            "www.shop.example",
            "<https://angle.example/x.>",
            "https://wiki.example/Foo_(bar)",
            "https://skip.example/z",
            "https://t.example/already",
            "https://",
            "mailto:a@b.example",
            "*|UNSUB|*",
        ]
    ),
    tokens(list(" \n.,;:!?()[]\"'’”»«“<>abc@/") + ["www", "http"], max_size=4),
)


@PROPERTY
@given(st.lists(TEXT_PIECES, max_size=12).map("".join), OPTIONS)
def test_property_text_rewriting_is_exactly_reversible(text: str, options: dict[str, object]) -> None:
    links = find_text_links(text, **options)  # type: ignore[arg-type]
    for link in links:
        assert text[link.start : link.end] == link.raw
    out = rewrite_text(text, {link.index: f"https://t.example/n{link.index}" for link in links}, **options)  # type: ignore[arg-type]
    rescanned = [link for link in find_text_links(out) if link.url.startswith("https://t.example/n")]
    assert [link.url for link in rescanned] == [f"https://t.example/n{i}" for i in range(len(links))]
    undone = out
    for new, old in reversed(list(zip(rescanned, links))):
        undone = undone[: new.start] + old.raw + undone[new.end :]
    assert undone == text


# The tokenizer against html5lib's (a spec implementation), where html5lib is installed: on
# documents without conditional comments (a comment for html5lib, markup for Outlook), the
# links found are exactly the a/area hrefs html5lib's tokenizer reads.
SOUP = tokens(
    list("<>!-/?[]'\"= abhrefABHREF:&;#x\n")
    + ["<a ", "<A\tHREF=", "href=", "<!--", "-->", "--!>", "http://x.example/", "https://y.example/a"]
    + ["<script>", "</script>", "<style>", "</style >", "<title>", "</title>", "<textarea>"]
    + ["</textarea>", "<![CDATA[", "]]>", "<?", "<area ", "</a>", "<!DOCTYPE html>", "&amp;"]
    + ["&quot;", "<base href=https://b.example/>", "data-hc-notrack", "<p ", "<img alt=", "="],
    max_size=50,
)


def html5lib_hrefs(html: str) -> list[str]:
    """The trackable hrefs html5lib's tokenizer reads, in order, with the module's URL rules."""
    from html5lib._tokenizer import HTMLTokenizer  # type: ignore[import-untyped]
    from html5lib.constants import tokenTypes  # type: ignore[import-untyped]

    tokenizer = HTMLTokenizer(html)
    hrefs, base = [], None
    for token in tokenizer:
        if token["type"] != tokenTypes["StartTag"]:
            continue
        name, attrs = token["name"], token["data"]  # attributes: a dict, the first one wins
        if name in ("a", "area") and "href" in attrs and "data-hc-notrack" not in attrs:
            hrefs.append(attrs["href"])
        elif name == "base" and "href" in attrs and base is None:
            base = attrs["href"]
        # What html5lib's tree builder does to its tokenizer after these start tags.
        if name in ("style", "xmp", "iframe", "noembed", "noframes"):
            tokenizer.state = tokenizer.rawtextState
        elif name in ("title", "textarea"):
            tokenizer.state = tokenizer.rcdataState
        elif name == "script":
            tokenizer.state = tokenizer.scriptDataState
        elif name == "plaintext":
            tokenizer.state = tokenizer.plaintextState
    # The module's URL rules (schemes, placeholders, base) applied to those values alone.
    def escape(value: str) -> str:
        return value.replace("&", "&amp;").replace('"', "&quot;")

    prefix = "" if base is None else f'<base href="{escape(base)}">'
    rebuilt = prefix + "".join(f'<a href="{escape(href)}">' for href in hrefs)
    return [link.url for link in find_html_links(rebuilt)]


@pytest.mark.skipif(
    importlib.util.find_spec("html5lib") is None,
    reason="html5lib is not installed: the comparison with a spec tokenizer needs it",
)
@settings(max_examples=250, deadline=None)
@given(SOUP)
def test_property_links_are_those_a_spec_tokenizer_reads(html: str) -> None:
    expected = html5lib_hrefs(html)
    assert [link.url for link in find_html_links(html)] == expected
