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

from switchboard.shared import streamids
from switchboard.shared.protocol import Event, encode


class Batch:
    """The events of one delivery, parsed and encoded once for every
    connection they go to."""

    def __init__(self, events: Sequence[Event]):
        self.ids = [event.id for event in events]
        self.keys = [streamids.parse(entry_id) for entry_id in self.ids]
        if any(a >= b for a, b in zip(self.keys, self.keys[1:])):
            # The rule above needs stream order; a batch out of order is a bug
            # upstream, and delivering it could repeat or skip events.
            raise ValueError("batch events are not in stream order")
        self.frames = [encode(event) for event in events]

    def first_fresh(self, last: str, prev: str) -> int | None:
        """For a connection that has delivered up to ``last``, given this
        batch's ``prev`` for it: the index of the first event to deliver, or
        None on a gap (then nothing may be delivered)."""
        if streamids.later(prev, last):
            return None
        return bisect_right(self.keys, streamids.parse(last))
