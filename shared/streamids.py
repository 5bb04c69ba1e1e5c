"""Redis Stream entry ids as comparable values.

A stream id is ``<ms>-<seq>``; ids of one stream grow strictly. They are unique
only within one stream, so any bookkeeping keyed by id must also name the stream.
"""

from __future__ import annotations

ZERO = "0-0"


def parse(stream_id: str) -> tuple[int, int]:
    """Split ``"1712-3"`` into ``(1712, 3)``; raise ``ValueError`` if malformed."""
    ms, sep, seq = stream_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a stream id: {stream_id!r}")
    return int(ms), int(seq)


def is_valid(stream_id: str) -> bool:
    try:
        parse(stream_id)
    except ValueError:
        return False
    return True


def later(a: str, b: str) -> bool:
    """``a > b`` in stream order."""
    return parse(a) > parse(b)
