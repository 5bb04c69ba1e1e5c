"""Finding a marker text in stored bytes: as it is, JSON-escaped, or inside
base64 (the checkpointer stores pending writes as base64 blobs, which hide
plain text from a byte search but not from anyone reading Redis)."""

from __future__ import annotations

import base64
import json


def needles(marker: str) -> list[bytes]:
    """Byte strings whose presence means ``marker`` is stored readable: the
    text, its JSON escape, and its base64 at each of the three alignments
    (without the characters that depend on the bytes around it)."""
    raw = marker.encode()
    found = {raw, json.dumps(marker)[1:-1].encode()}
    for shift, skip in ((0, 0), (1, 2), (2, 3)):
        encoded = base64.b64encode(b"\0" * shift + raw)
        found.add(encoded[skip:-4])
    return sorted(found)


def contains(data: bytes, marker: str) -> bool:
    return any(needle in data for needle in needles(marker))
