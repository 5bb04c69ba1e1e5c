"""The device's place in its event stream across connections, and the
buffer between the connection and the application.

:class:`Tracker` is pure: given each ``welcome`` and event it says which
events are new (never one twice across a reconnect seam) and when the
application must be told that events may be missing (``recovered: false``).
:class:`EventBuffer` is the bounded queue the connection fills and
``Client.events()`` drains.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from switchboard.shared import streamids
from switchboard.shared.protocol import Event, Welcome

#: Events received and not yet taken by the application, at most (then the
#: connection stops reading: the gateway's outbox fills, the events wait in Redis).
MAX_BUFFERED_EVENTS = 1000
#: Bytes of those events (their text plus a fixed overhead each), at most; the first always fits.
MAX_BUFFERED_BYTES = 8 * 1024 * 1024
_EVENT_OVERHEAD = 256


@dataclass(frozen=True)
class Gap:
    """``recovered: false``: events before this point may be missing. Reload
    ``history`` of the conversations on screen; events after it are complete."""

    epoch: str
    resume_from: str  #: the id the server resumed after


@dataclass(frozen=True)
class Item:
    epoch: str  #: the stream life the event belongs to
    value: Event | Gap


class Tracker:
    """The newest event received (``epoch``, ``last_id``): what the next ``hello`` sends."""

    def __init__(self, epoch: str | None = None, last_id: str | None = None):
        self.epoch = epoch
        self.last_id = last_id

    def welcome(self, welcome: Welcome) -> Gap | None:
        """Take a ``welcome``; the :class:`Gap` to show the application, if any."""
        # Recovered: resume_from is the last_id sent and what follows continues it
        # exactly. Not recovered: the server starts after resume_from, which may lie
        # before the old position (the stream lost events, or is a new life), and
        # what follows is new all the same.
        self.epoch, self.last_id = welcome.epoch, welcome.resume_from
        return None if welcome.recovered else Gap(welcome.epoch, welcome.resume_from)

    def is_new(self, event: Event) -> bool:
        """True once per event id: False for an id at or before the newest received."""
        if self.last_id is not None and not streamids.later(event.id, self.last_id):
            return False
        self.last_id = event.id
        return True


def item_size(item: Item) -> int:
    return _EVENT_OVERHEAD + (len(item.value.text) if isinstance(item.value, Event) else 0)


class EventBuffer:
    """A FIFO bounded by count and bytes: :meth:`put` waits while it is full."""

    def __init__(self, max_items: int = MAX_BUFFERED_EVENTS, max_bytes: int = MAX_BUFFERED_BYTES):
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._changed = asyncio.Condition()
        self._closed: BaseException | None = None
        self._ended = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self._max_items and self._bytes + size <= self._max_bytes

    async def put(self, item: Item) -> None:
        size = item_size(item)
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(size) or self._ended)
            if self._ended:
                return
            self._items.append(item)
            self._bytes += size
            self._changed.notify_all()

    async def get(self) -> Item | None:
        """The next item; None once ended and drained (or raises the error it ended with)."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items) or self._ended)
            if not self._items:
                if self._closed is not None:
                    raise self._closed
                return None
            item = self._items.popleft()
            self._bytes -= item_size(item)
            self._changed.notify_all()
            return item

    async def end(self, error: BaseException | None = None) -> None:
        """No more items: :meth:`get` drains what is left, then returns None (or raises ``error``)."""
        async with self._changed:
            if self._ended:
                return  # the first ending stands
            self._ended = True
            self._closed = error
            self._changed.notify_all()
