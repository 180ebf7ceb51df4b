"""Applying edits to a text or to bytes: the one splice of the link rewriter and the MIME splicer.

Both say what they change as ``(start, end, new)`` edits and keep every other character or byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import AnyStr

__all__ = ["splice"]


def splice(doc: AnyStr, edits: Sequence[tuple[int, int, AnyStr]]) -> AnyStr:
    """``doc`` with each ``(start, end, new)`` of ``edits`` applied: ``doc[start:end]`` becomes
    ``new``. The edits are in document order and do not overlap."""
    if not edits:
        return doc
    pieces = []
    pos = 0
    for start, end, new in edits:
        pieces.append(doc[pos:start])
        pieces.append(new)
        pos = end
    pieces.append(doc[pos:])
    return doc[:0].join(pieces)
