"""Which events go to which connection: a pure function with its own tests.

The fanout reads a user's outbound stream once, from the smallest cursor among
the user's attached connections, and cuts that read into one batch per
connection. Because the read is contiguous from the smallest cursor, every
batch holds *all* events in ``(cursor, last event]`` -- the property gateways
rely on to detect gaps (:mod:`switchboard.gateway.cursor`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from switchboard.shared import streamids
from switchboard.shared.protocol import Event


@dataclass
class Attachment:
    gateway: str
    conn: str
    user: str
    cursor: str  #: newest event id sent to this connection


@dataclass(frozen=True)
class Batch:
    attachment: Attachment
    prev: str
    events: list[Event]
    lost: bool = False


def read_from(attachments: Iterable[Attachment]) -> str:
    """The exclusive start of the next read: the smallest cursor."""
    return min((a.cursor for a in attachments), key=streamids.parse, default=streamids.ZERO)


def plan(attachments: Iterable[Attachment], events: Sequence[Event], *, start: str,
         trimmed: str) -> list[Batch]:
    """Cut ``events`` -- every event after ``start`` up to the last one -- into
    batches, and advance each attachment's cursor past what it is sent.

    An attachment whose cursor is older than ``trimmed`` (the newest id removed
    by retention) would silently miss events: it gets a ``lost`` batch instead.
    """
    keyed = [(streamids.parse(e.id), e) for e in events]
    start_key = streamids.parse(start)
    trimmed_key = streamids.parse(trimmed)
    batches: list[Batch] = []
    for att in attachments:
        cursor_key = streamids.parse(att.cursor)
        if cursor_key < start_key:
            continue  # not covered by this read; the caller reads again
        if cursor_key < trimmed_key:
            batches.append(Batch(att, att.cursor, [], lost=True))
            continue
        fresh = [e for k, e in keyed if k > cursor_key]
        if fresh:
            batches.append(Batch(att, att.cursor, fresh))
            att.cursor = fresh[-1].id
    return batches
