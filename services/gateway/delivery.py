"""What one connection does with each delivery: a state object, no I/O.

:class:`DeliveryState` holds what the hub knows about a connection's delivery
-- the cursor it has queued up to, the fanout it is attached to, whether it is
paused or closing -- and answers every question the hub asks with a
:class:`Decision`, which the hub (:mod:`.hub`) only carries out:

=============  ==============================================================
decision       the hub
=============  ==============================================================
``Deliver``    queues ``count`` frames of the batch from ``start``; pauses
               the connection when ``pause`` (the rest did not fit)
``Reattach``   attaches the connection again, from its cursor
``Resync``     closes it with ``RESYNC`` (4009): it cannot continue exactly
``Ignore``     does nothing
=============  ==============================================================

The rules, for a batch's :class:`~switchboard.shared.internal.Target` with
``prev`` and a connection at ``last``:

- a closed or paused connection ignores everything (a paused one is attached
  again from its cursor once its outbox has room, which repairs whatever it
  ignored);
- a *lost* target means the fanout found events after ``prev`` trimmed and
  dropped its attachment: nothing more comes from it for this connection.
  With ``prev >= last`` the connection lacks events in ``(last, prev]`` and
  every id up to the trim mark (which is newer than ``prev``) is gone, so it
  resyncs. With ``prev < last`` the connection already has more than the
  fanout thought (a batch it took raced a re-attach, or it came from another
  fanout), so it may still continue exactly: it re-attaches from ``last``, and
  the fanout's read from there says whether it can;
- otherwise :meth:`~.cursor.DeliveryEvents.first_fresh` says where the batch
  continues the connection, or that it leaves a gap, which re-attaches the
  connection unless it was attached less than ``resync_holdoff`` seconds
  ago (``RESYNC_HOLDOFF``, default 0.25; batches
  sent before the fanout saw that attach are still arriving; the read the
  attach asked for comes after them).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from switchboard.shared import streamids
from switchboard.shared.internal import Target

from .cursor import DeliveryEvents

#: The close reason of a resync (sent to the client with 4009).
RESYNC_REASON = "events were trimmed before delivery; reconnect"


@dataclass(frozen=True)
class Deliver:
    """Queue ``frames[start:start + count]`` of the batch; the connection's
    cursor is now ``last``. ``pause``: the rest did not fit in the outbox, so
    the connection is paused (``count`` may then be 0)."""

    start: int
    count: int
    last: str
    pause: bool


@dataclass(frozen=True)
class Reattach:
    """Attach the connection again, from its cursor."""

    why: str


@dataclass(frozen=True)
class Resync:
    """Close the connection with ``RESYNC``: events it lacks are gone."""

    why: str = RESYNC_REASON


@dataclass(frozen=True)
class Ignore:
    """Nothing to do (``why`` is for logs and tests)."""

    why: str


Decision = Deliver | Reattach | Resync | Ignore


def choose_fanout(user: str, live: Mapping[str, str]) -> str | None:
    """Rendezvous hashing: every gateway picks the same fanout for a user, and
    losing one fanout moves only that fanout's users."""
    if not live:
        return None
    return max(live, key=lambda fid: (zlib.crc32(f"{fid}|{user}".encode()), fid))


def resume_room(outbox_size: int) -> int:
    """Free outbox slots (or bytes) a paused connection waits for before it
    is attached again: half the outbox, so a resumed replay moves in large
    batches rather than one frame at a time."""
    return max(1, outbox_size // 2)


class DeliveryState:
    """Delivery state of one connection (see the module docstring)."""

    def __init__(self, last: str, resync_holdoff: float = 0.25):
        self.last = last  #: newest event id put in the outbox
        self.resync_holdoff = resync_holdoff  #: seconds after an attach in which a gap re-attaches nothing
        self.fanout: tuple[str, str] | None = None  #: (fanout id, incarnation) attached to
        self.paused = False  #: detached until its outbox has room (see :mod:`.hub`)
        self.closed = False  #: being closed: deliver nothing more
        self.last_attach = float("-inf")  #: when the last attach was sent (monotonic seconds)

    # -- deliveries ------------------------------------------------------------

    def on_batch(self, target: Target, events: DeliveryEvents,
                 room: int | Callable[[Sequence[bytes]], int], now: float) -> Decision:
        """Decide what a delivery's ``target`` for this connection does, given
        the delivery's ``events``, the outbox's ``room`` -- free slots, or a
        function saying how many leading frames of the fresh ones fit (by
        count and bytes: :meth:`~.outbox.Outbox.fitting`) -- and the
        monotonic time ``now``. A :class:`Deliver` has already advanced
        :attr:`last` (and set :attr:`paused`); the caller queues its frames.

        ``ValueError`` (and no change) if the events are not in stream order
        or an id is malformed: the delivery must be dropped.
        """
        if self.closed:
            return Ignore("closed")
        if self.paused:
            return Ignore("paused")
        if target.lost:
            if streamids.parse(target.prev) >= streamids.parse(self.last):
                return Resync()
            return Reattach(f"lost from {target.prev}, behind this connection's {self.last}")
        start = events.first_fresh(self.last, target.prev)
        if start is None:
            if now - self.last_attach > self.resync_holdoff:
                return Reattach(f"gap: have {self.last}, batch from {target.prev}")
            return Ignore("gap right after an attach")
        fresh = len(events) - start
        if not fresh:
            return Ignore("nothing new")
        count = min(fresh, room if isinstance(room, int) else room(events.frames[start:]))
        if count:
            self.last = events.ids[start + count - 1]
        pause = count < fresh
        if pause:
            self.paused = True
        return Deliver(start, count, self.last, pause)

    # -- attaching ---------------------------------------------------------------

    def needs_attach(self, live: Mapping[str, str]) -> bool:
        """For the liveness monitor: whether delivery may have stopped because
        the connection's fanout died or restarted (its liveness key is gone or
        names another incarnation, whose attachments start empty), or because
        no fanout was live at its last attach."""
        if self.paused or self.closed:
            return False
        return self.fanout is None or live.get(self.fanout[0]) != self.fanout[1]

    def start_attach(self, user: str, live: Mapping[str, str], now: float) -> tuple[str, str] | None:
        """Begin an attach: the ``(fanout id, incarnation)`` to send it to, or
        None when there is nothing to send -- the connection is paused (its
        resume attaches it) or no fanout is live (the monitor retries)."""
        if self.paused:
            return None
        self.last_attach = now
        fid = choose_fanout(user, live)
        if fid is None:
            self.fanout = None
            return None
        return fid, live[fid]

    def attached(self, fanout: tuple[str, str] | None) -> None:
        """Record where the attach went: None when it reached no fanout (the
        monitor retries)."""
        self.fanout = fanout

    # -- pausing -----------------------------------------------------------------

    def resumed(self) -> None:
        """The outbox has room again: deliveries count from the next attach."""
        self.paused = False
