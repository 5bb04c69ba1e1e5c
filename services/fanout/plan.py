"""Which events go to which connection: pure functions with their own tests.

The fanout reads a user's outbound stream once, from the smallest cursor among
the user's attached connections (or takes the events of the user's append
notices, when they continue that cursor), and cuts those events into one
:class:`ConnectionBatch` per connection, then merges those into one
:class:`GatewayBatch` per gateway. Because the events are contiguous from the
smallest cursor, every connection's batch holds *all* events in ``(cursor,
last event]`` -- the property gateways rely on to detect gaps
(:mod:`switchboard.gateway.cursor`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from switchboard.shared import outbound, streamids
from switchboard.shared.protocol import Event


@dataclass
class Attachment:
    """One connection attached here, by the gateway it lives on."""

    gateway: str
    conn: str
    user: str
    cursor: str  #: newest event id sent to this connection


@dataclass(frozen=True)
class ConnectionBatch:
    """What one read sends one connection: every event after ``prev`` (its
    cursor before the read), or ``lost`` when some of those were trimmed."""

    attachment: Attachment
    prev: str
    events: list[Event]
    lost: bool = False


def read_from(attachments: Iterable[Attachment]) -> str:
    """The exclusive start of the next read: the smallest cursor."""
    return min((a.cursor for a in attachments), key=streamids.parse, default=streamids.ZERO)


def continuing(notices: Sequence[outbound.AppendNotice], start: str) -> list[Event] | None:
    """The events of ``notices`` (in publish order) after ``start``, if they
    follow ``start`` without a hole -- the first names ``start`` as the entry
    before it, each next one the previous -- so they can be delivered without
    reading the stream. ``[]`` when all were delivered already; None when the
    stream must be read (a notice was missed, or the chain begins elsewhere)."""
    start_key = streamids.parse(start)
    after = [n for n in notices if streamids.parse(n.id) > start_key]
    expected = start
    for notice in after:
        if notice.prev != expected:
            return None
        expected = notice.id
    return [n.event() for n in after]


def plan(attachments: Iterable[Attachment], events: Sequence[Event], *, start: str,
         trimmed: str) -> list[ConnectionBatch]:
    """Cut ``events`` -- every event after ``start`` up to the last one -- into
    batches, and advance each attachment's cursor past what it is sent.

    An attachment whose cursor is older than ``trimmed`` (the newest id removed
    by retention) would silently miss events: it gets a ``lost`` batch instead.
    """
    # ``events`` come from one XRANGE, so they are in stream order.
    event_keys = [streamids.parse(e.id) for e in events]
    start_key = streamids.parse(start)
    trimmed_key = streamids.parse(trimmed)
    batches: list[ConnectionBatch] = []
    for att in attachments:
        cursor_key = streamids.parse(att.cursor)
        if cursor_key < start_key:
            continue  # not covered by this read; the caller reads again
        if cursor_key < trimmed_key:
            batches.append(ConnectionBatch(att, att.cursor, [], lost=True))
            continue
        fresh = list(events[bisect_right(event_keys, cursor_key):])
        if fresh:
            batches.append(ConnectionBatch(att, att.cursor, fresh))
            att.cursor = fresh[-1].id
    return batches


@dataclass(frozen=True)
class GatewayBatch:
    """The connection batches of one read that go to one gateway, merged into
    one message."""

    gateway: str
    targets: list[ConnectionBatch]
    events: list[Event]  #: every event any non-lost target needs, once


def by_gateway(batches: Iterable[ConnectionBatch]) -> list[GatewayBatch]:
    """Merge the batches of one read per gateway.

    Every batch of one read is a suffix of that read, so the longest one holds
    every other's events: it is the only list that needs to travel. A lost
    batch carries no events.
    """
    targets: dict[str, list[ConnectionBatch]] = {}
    longest: dict[str, list[Event]] = {}
    for batch in batches:
        gateway = batch.attachment.gateway
        targets.setdefault(gateway, []).append(batch)
        if len(batch.events) > len(longest.get(gateway, ())):
            longest[gateway] = batch.events
    return [GatewayBatch(gateway, group, longest.get(gateway, [])) for gateway, group in targets.items()]


#: Bytes a delivery message spends on an event beyond its text, id and
#: conversation id (field names, kind, client_msg_id, device_id, ts, seq):
#: an upper estimate, so the byte bounds err on the safe side.
EVENT_OVERHEAD = 160


def event_bytes(event: Event) -> int:
    """About how many bytes ``event`` takes in a delivery message."""
    return len(event.text.encode()) + len(event.id) + len(event.conversation_id) + EVENT_OVERHEAD


class RoundBudget:
    """Bytes one round publishes to each gateway, at most.

    Redis drops a pub/sub subscriber whose output buffer passes its
    ``client-output-buffer-limit pubsub`` (32 MB by default), and a gateway
    that lost its subscription re-attaches every connection -- which reads
    and sends everything again. So no round may queue more than ``limit``
    bytes for one gateway: a user whose delivery would pass it waits for the
    next round (it stays dirty and is read again). The first delivery to a
    gateway in a round always goes, so that one event larger than the limit
    still moves."""

    def __init__(self, limit: int):
        self.limit = limit
        self.spent: dict[str, int] = {}

    def admit(self, gateways: Iterable[str], size: int) -> bool:
        """Whether a user's delivery of ``size`` bytes to each of
        ``gateways`` fits in this round; if so, it is counted."""
        gateways = list(gateways)
        for gateway in gateways:
            spent = self.spent.get(gateway, 0)
            if spent and spent + size > self.limit:
                return False
        for gateway in gateways:
            self.spent[gateway] = self.spent.get(gateway, 0) + size
        return True
