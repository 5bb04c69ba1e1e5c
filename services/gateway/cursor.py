"""Accepting delivery batches on a connection: the gap/duplicate rule.

A fanout sends events in batches; for each connection a batch is meant for,
it holds *every* event of the user's outbound stream in ``(prev, last event]``
(``prev`` is per connection). A connection that has delivered up to ``last``
can therefore:

- take the events after ``last`` from a batch with ``prev <= last`` (a batch
  that overlaps what was delivered, e.g. after a re-attach, is trimmed, never
  shown twice);
- not take a batch with ``prev > last``: events in ``(last, prev]`` would be
  missing, so the connection must re-attach from ``last``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from functools import cached_property

from switchboard.shared import streamids
from switchboard.shared.protocol import Event, encode


class DeliveryEvents:
    """The events of one delivery (:class:`~switchboard.shared.internal.Delivery`),
    parsed and encoded once for every connection they go to.

    Both happen on first use, so a delivery whose connections are all gone or
    paused costs nothing but its decoding.
    """

    def __init__(self, events: Sequence[Event]):
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    @cached_property
    def ids(self) -> list[str]:
        return [event.id for event in self.events]

    @cached_property
    def keys(self) -> list[tuple[int, int]]:
        """The ids as comparable keys; ``ValueError`` if they are not in
        stream order."""
        keys = [streamids.parse(entry_id) for entry_id in self.ids]
        if any(a >= b for a, b in zip(keys, keys[1:])):
            # The rule above needs stream order; a batch out of order is a bug
            # upstream, and delivering it could repeat or skip events.
            raise ValueError("batch events are not in stream order")
        return keys

    @cached_property
    def frames(self) -> list[bytes]:
        """Each event encoded as the UTF-8 bytes of its ``event`` text frame."""
        return [encode(event) for event in self.events]

    def first_fresh(self, last: str, prev: str) -> int | None:
        """For a connection that has delivered up to ``last``, given this
        batch's ``prev`` for it: the index of the first event to deliver, or
        None on a gap (then nothing may be delivered). ``ValueError`` if the
        events are not in stream order."""
        keys = self.keys  # validates the order before anything is decided
        if streamids.later(prev, last):
            return None
        return bisect_right(keys, streamids.parse(last))
