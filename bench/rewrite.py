"""Link rewriting benchmark: HotClicks' splicer against pytracking's ``adapt_html``.

Both do the same job on every ``*.html`` template of the corpus: every link becomes a tracked
link and the open pixel is added.

- ours: ``find_html_links`` then ``rewrite_html`` with each link replaced by a tracked URL as long
  as a signed token makes them (about 120 characters) and ``pixel_url`` set. The scan caches are
  cleared before each repetition, so every document is tokenized once per repetition (as the
  relay does: it finds the links of a part once, then rewrites it once per recipient).
- ref: pytracking ``adapt_html`` (lxml parse and serialize), click and open tracking, with a base
  URL and a Fernet key, so its links are signed (encrypted), through one ``Configuration``.

Passes over the corpus alternate (ours, ref, ours, ...), with the garbage collector off while a
pass is timed, as timeit does; each side's median pass is reported, in MB/s of input (file bytes). Also reported: the VML links each tracked (hrefs of ``<v:...>`` elements inside
Outlook conditional comments), and the bytes changed outside the hrefs. That measure is the same
for both: href values are emptied on both sides and the pixel taken out of the output, both
texts are cut into tokens (tag openers, ``name=value`` attributes, words, whitespace runs,
punctuation) and difflib's matching blocks give the share of input bytes whose tokens did not
come through unchanged. For ours, the exact check is reported too: the rewritten hrefs put back
and the pixel taken out give the file back byte for byte.

    python -m pip install -r bench/requirements.txt
    python bench/rewrite.py [--corpus DIR] [--repeat 21]

The last line is ``RESULT rewrite ours=<MB/s> ref=<MB/s> unit=MB/s ratio=<ours/ref>``.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import gc
import hashlib
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hotclicks import rewrite  # noqa: E402

CLICK_BASE = "https://t.example.com/t/c/"
OPEN_BASE = "https://t.example.com/t/o/"
#: A token as long as a signed one (payload + signature, base64url): about 96 characters.
TOKEN = base64.urlsafe_b64encode(hashlib.sha512(b"bench").digest() + b"0123456789abcdef").decode()
PIXEL_URL = OPEN_BASE + TOKEN

_VML_TRACKED = re.compile(r"<v:\w+\b[^>]*?\shref\s*=\s*[\"']?" + re.escape(CLICK_BASE), re.I)
_HREF_VALUE = re.compile(r"""(\shref\s*=\s*)(?:"[^"]*"|'[^']*'|[^\s>]*)""", re.I)
_TOKENS = re.compile(
    r"""<[!/?]?[\w:.-]*|[\w:.-]+\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]*)|[^<>\s"'=/]+|\s+|."""
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=ROOT.parent / "shared" / "corpus",
        help="folder of *.html templates (default: ../shared/corpus beside the repository)",
    )
    parser.add_argument("--repeat", type=int, default=21, help="repetitions (default 21)")
    return parser


def clear_caches() -> None:
    """Forget the scans: each repetition tokenizes every document again."""
    rewrite._scan.cache_clear()
    rewrite._trackable.cache_clear()


def ours(doc: str) -> str:
    links = rewrite.find_html_links(doc)
    hrefs = {link.index: f"{CLICK_BASE}{TOKEN}{link.index:04d}" for link in links}
    return rewrite.rewrite_html(doc, hrefs, pixel_url=PIXEL_URL)


def make_ref(adapt_html, configuration):  # type: ignore[no-untyped-def]
    metadata = {"execution": 42, "message": 1234567}

    def ref(doc: str) -> str:
        return adapt_html(doc, metadata, configuration=configuration)

    return ref


def _unmatched(a: list[str], b: list[str]) -> list[tuple[int, int, int, int]]:
    """The (a_start, a_end, b_start, b_end) blocks where two sequences differ."""
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return [(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in blocks if tag != "equal"]


def changed_outside_hrefs(original: str, output: str) -> int:
    """Input characters whose tokens do not come through, href values and pixel set aside.

    Lines are matched first, then the tokens of the lines that differ (a two-level diff, so
    that large files stay quick).
    """
    a_lines = _HREF_VALUE.sub(r"\1", original).splitlines(keepends=True)
    b_lines = _HREF_VALUE.sub(r"\1", output).splitlines(keepends=True)
    changed = 0
    for i1, i2, j1, j2 in _unmatched(a_lines, b_lines):
        a = _TOKENS.findall("".join(a_lines[i1:i2]))
        b = _TOKENS.findall("".join(b_lines[j1:j2]))
        for k1, k2, _, _ in _unmatched(a, b):
            changed += sum(len(token) for token in a[k1:k2])
    return changed


def without_pixel_ours(output: str) -> str:
    pixel = rewrite.PIXEL_TEMPLATE.format(PIXEL_URL)
    at = output.rfind(pixel)
    return output[:at] + output[at + len(pixel) :]


def without_pixel_ref(output: str) -> str:
    return re.sub(r'<img src="' + re.escape(OPEN_BASE) + r'[^"]*">', "", output)


def undo_ours(doc: str, output: str) -> str:
    """The output with the original href values put back and the pixel taken out."""
    links = rewrite.find_html_links(doc)
    new = [
        link
        for link in rewrite.find_html_links(output)
        if link.url.startswith(CLICK_BASE + TOKEN)
    ]
    pieces, position = [], 0
    for old, link in zip(links, new):
        start, end = (link.start - 1, link.end + 1) if old.quote == "" else (link.start, link.end)
        pieces += [output[position:start], old.raw]
        position = end
    pieces.append(output[position:])
    return without_pixel_ours("".join(pieces))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from cryptography.fernet import Fernet
        from pytracking import Configuration  # type: ignore[import-untyped]
        from pytracking.html import adapt_html  # type: ignore[import-untyped]
    except ImportError as exc:
        print(
            f"pytracking with lxml and cryptography is needed for the reference ({exc}):\n"
            "    python -m pip install -r bench/requirements.txt",
            file=sys.stderr,
        )
        return 2
    paths = sorted(args.corpus.glob("*.html"))
    if not paths:
        print(f"no *.html in {args.corpus}", file=sys.stderr)
        return 2
    raw = [path.read_bytes() for path in paths]
    docs = [data.decode("utf-8", errors="surrogateescape") for data in raw]
    size = sum(len(data) for data in raw)
    configuration = Configuration(
        base_click_tracking_url=CLICK_BASE,
        base_open_tracking_url=OPEN_BASE,
        encryption_bytestring_key=Fernet.generate_key(),
    )
    ref = make_ref(adapt_html, configuration)

    clear_caches()
    ours_outputs = [ours(doc) for doc in docs]  # warm up, and the outputs to examine
    ref_outputs = [ref(doc) for doc in docs]
    # Passes over the corpus alternate, ours then ref, and the garbage collector is off while a
    # pass is timed (as timeit does): each side is measured on a pass of its own.
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    clock = time.perf_counter
    for _ in range(args.repeat):
        for name, run in (("ours", ours), ("ref", ref)):
            gc.collect()
            clear_caches()
            gc.disable()
            try:
                start = clock()
                for doc in docs:
                    run(doc)
                times[name].append(clock() - start)
            finally:
                gc.enable()
    mbps = {name: size / statistics.median(t) / 1e6 for name, t in times.items()}

    links = [rewrite.find_html_links(doc) for doc in docs]
    vml_total = sum(1 for found in links for link in found if ":" in link.tag)
    vml_ours = sum(len(_VML_TRACKED.findall(out)) for out in ours_outputs)
    vml_ref = sum(len(_VML_TRACKED.findall(out)) for out in ref_outputs)
    exact = sum(1 for doc, out in zip(docs, ours_outputs) if undo_ours(doc, out) == doc)
    changed_ours = sum(
        changed_outside_hrefs(doc, without_pixel_ours(out)) for doc, out in zip(docs, ours_outputs)
    )
    changed_ref = sum(
        changed_outside_hrefs(doc, without_pixel_ref(out)) for doc, out in zip(docs, ref_outputs)
    )
    characters = sum(len(doc) for doc in docs)

    print(f"corpus: {len(docs)} HTML files, {size / 1e6:.2f} MB, {sum(map(len, links))} trackable links")
    for name, label in (("ours", "hotclicks find_html_links + rewrite_html"), ("ref", "pytracking adapt_html (lxml, Fernet key)")):
        t = times[name]
        print(
            f"{name:4s} {label}: median {statistics.median(t) * 1e3:.1f} ms "
            f"(min {min(t) * 1e3:.1f}, max {max(t) * 1e3:.1f}) over {len(t)} runs = {mbps[name]:.2f} MB/s"
        )
    fastest = {name: size / min(t) / 1e6 for name, t in times.items()}
    print(
        f"fastest passes (least disturbed by other load): ours {fastest['ours']:.2f} MB/s, "
        f"ref {fastest['ref']:.2f} MB/s, ratio {fastest['ours'] / fastest['ref']:.2f}"
    )
    print(f"VML links tracked: ours {vml_ours} of {vml_total}, ref {vml_ref} of {vml_total}")
    print(
        "bytes changed outside hrefs (token diff, href values emptied, pixel removed): "
        f"ours {100 * changed_ours / characters:.2f} %, ref {100 * changed_ref / characters:.2f} %"
    )
    print(f"ours, exact check: rewritten hrefs put back and pixel removed = the file, {exact} of {len(docs)} files")
    print(
        f"RESULT rewrite ours={mbps['ours']:.2f} ref={mbps['ref']:.2f} unit=MB/s "
        f"ratio={mbps['ours'] / mbps['ref']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
