"""Accepting delivery batches on a connection: the gap/duplicate rule.

A fanout sends events in batches; each batch holds *every* event of the user's
outbound stream in ``(prev, last event]``. A connection that has delivered up to
``last`` can therefore:

- take the events after ``last`` from a batch with ``prev <= last`` (a batch
  that overlaps what was delivered, e.g. after a re-attach, is trimmed, never
  shown twice);
- not take a batch with ``prev > last``: events in ``(last, prev]`` would be
  missing, so the connection must re-attach from ``last``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from switchboard.shared import streamids

E = TypeVar("E")


def accept_batch(last: str, prev: str, ids_and_events: Sequence[tuple[str, E]]) -> tuple[list[E], bool]:
    """Return ``(events to deliver, gap)``; on a gap nothing is delivered."""
    if streamids.later(prev, last):
        return [], True
    last_key = streamids.parse(last)
    return [event for entry_id, event in ids_and_events if streamids.parse(entry_id) > last_key], False
