"""The users attached to one fanout and what each needs next: plain state, no I/O.

For every user with connections attached here the :class:`Registry` keeps

- the attachments (connection -> gateway and cursor, :class:`~.plan.Attachment`);
- whether the user is *dirty* -- something may be new for one of its
  connections -- and, if so, whether only a read of its outbound stream can
  say what (*must read*: an attach, a missed or malformed notice, the sweep)
  or the append notices received since its last delivery may (the live path);
- those notices, at most ``batch`` of them: past that, one read fetches as
  much as they hold, so they are dropped and the user must be read.

The service (:mod:`.service`) feeds it what arrives on pub/sub and carries out
its answers: :meth:`Registry.take_round` hands the pump a round of dirty users,
each either to read from a cursor or with the events of its notices;
:meth:`Registry.cut` turns what a round brought into one message per gateway,
advancing cursors and dropping attachments whose events were trimmed.

:class:`GatewayWatch` decides when a gateway that stopped listening is gone,
so that its attachments are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from switchboard.shared import outbound
from switchboard.shared.protocol import Event

from .plan import Attachment, GatewayBatch, by_gateway, continuing, plan, read_from


@dataclass(frozen=True)
class Read:
    """Read the user's outbound stream after ``start`` (its smallest cursor)."""

    user: str
    start: str


@dataclass(frozen=True)
class FromNotices:
    """Deliver ``events``, taken from the user's notices: they continue
    ``start`` (its smallest cursor) without a hole, so nothing needs reading."""

    user: str
    start: str
    events: list[Event]


@dataclass(frozen=True)
class Round:
    """The users the pump handles in one round trip, and what each needs."""

    users: list[str]  #: every user taken, to put back with :meth:`Registry.retry`
    reads: list[Read]
    direct: list[FromNotices]


class Registry:
    """Attachments and delivery needs of the users attached to one fanout
    (see the module docstring)."""

    def __init__(self, batch: int, batch_bytes: int = 1 << 20, pace: float = 0.0):
        self.batch = batch  #: events per read, and notices kept per user
        self.batch_bytes = batch_bytes  #: bytes per read, and of the notices kept per user
        #: seconds between two reads of a user whose last read its byte budget cut
        self.pace = pace
        self._paced: dict[str, float] = {}  #: such users -> when they may be read again
        # A user stays here with no attachments once its last one was dropped
        # as lost: it is still subscribed, and goes with its next detach.
        self._users: dict[str, dict[str, Attachment]] = {}
        self._dirty: set[str] = set()
        self._must_read: set[str] = set()  #: dirty users whose stream must be read
        self._notices: dict[str, list[outbound.AppendNotice]] = {}  #: per user, since its last delivery
        self._notice_bytes: dict[str, int] = {}  #: size of each user's kept notices

    def __contains__(self, user: str) -> bool:
        return user in self._users

    def __len__(self) -> int:
        """Users attached (metrics)."""
        return len(self._users)

    def attachment_count(self) -> int:
        """Connections attached, over all users (metrics: a walk over the users)."""
        return sum(map(len, self._users.values()))

    def attachments(self, user: str) -> list[Attachment]:
        return list(self._users.get(user, {}).values())

    @property
    def dirty(self) -> bool:
        """Whether some user waits for a round."""
        return bool(self._dirty)

    def clear(self) -> None:
        """Forget everything: a new incarnation, whose gateways attach again."""
        self._users.clear()
        self._dirty.clear()
        self._must_read.clear()
        self._notices.clear()
        self._notice_bytes.clear()
        self._paced.clear()

    # -- what arrives --------------------------------------------------------------

    def attach(self, gateway: str, conn: str, user: str, cursor: str) -> None:
        """Attach (or move) a connection at ``cursor``; its user must be read.

        For a user not yet here (``user not in registry``), the caller
        subscribes to the user's notify channel *first*: the read this attach
        asks for then comes after the subscription, so no append after the
        read goes unnoticed."""
        self._users.setdefault(user, {})[conn] = Attachment(gateway, conn, user, cursor)
        self._mark(user, read=True)

    def detach(self, user: str, conn: str) -> bool:
        """Forget a connection; True when its user has no attachment left and
        is gone (the caller unsubscribes from its notify channel)."""
        attachments = self._users.get(user)
        if attachments is None:
            return False
        attachments.pop(conn, None)
        if attachments:
            return False
        self._forget(user)
        return True

    def on_notice(self, user: str, notice: outbound.AppendNotice | None, size: int = 0) -> bool:
        """An append notice for ``user`` (None: one that could not be parsed,
        which still says "read this user") of ``size`` bytes; True when the
        user is attached here, so that the pump has work.

        Notices are kept up to ``batch`` of them and ``batch_bytes`` bytes
        (the first always): one read fetches as much as that, so past it they
        are dropped and the user is read, in byte-bounded reads."""
        if user not in self._users:
            return False  # published before the unsubscribe took effect
        pending = self._notices.setdefault(user, [])
        held = self._notice_bytes.get(user, 0)
        if notice is None or len(pending) >= self.batch or (pending and held + size > self.batch_bytes):
            self._notices.pop(user, None)
            self._notice_bytes.pop(user, None)
            self._mark(user, read=True)
        else:
            pending.append(notice)
            self._notice_bytes[user] = held + size
            self._mark(user, read=False)
        return True

    def mark_all(self) -> bool:
        """The sweep: every user must be read (so a lost notice costs at most
        one sweep interval); True when there is anyone."""
        self._dirty.update(self._users)
        self._must_read.update(self._users)
        return bool(self._users)

    # -- rounds --------------------------------------------------------------------

    def next_due(self, now: float) -> float | None:
        """Seconds until some dirty user may be taken (0: now); None when
        nobody is dirty."""
        if not self._dirty:
            return None
        soonest = min((self._paced.get(user, 0.0) for user in self._dirty), default=0.0)
        return max(0.0, soonest - now)

    def take_round(self, limit: int, now: float = float("inf")) -> Round:
        """Take up to ``limit`` dirty users that are due at ``now`` and say,
        for each that still has attachments and may have something new, how
        to get its events.

        A user whose last read was cut by its byte budget (a large replay) is
        due only ``pace`` seconds after that read: a replay then moves at most
        ``batch_bytes`` per ``pace``, and leaves Redis, this fanout and the
        gateways time for every other user's live traffic."""
        users: list[str] = []
        for user in self._dirty:
            if len(users) >= limit:
                break
            if self._paced.get(user, 0.0) <= now:
                users.append(user)
        self._dirty.difference_update(users)
        for user in users:
            self._paced.pop(user, None)
        reads: list[Read] = []
        direct: list[FromNotices] = []
        for user in users:
            notices = self._notices.pop(user, [])
            self._notice_bytes.pop(user, None)
            must_read = user in self._must_read
            self._must_read.discard(user)
            attachments = self._users.get(user)
            if not attachments:
                continue
            start = read_from(attachments.values())
            events = None if must_read else continuing(notices, start)
            if events is None:
                reads.append(Read(user, start))
            elif events:
                direct.append(FromNotices(user, start, events))
        return Round(users, reads, direct)

    def retry(self, round_: Round) -> None:
        """A round failed (Redis was unreachable): take its users again, with a
        read, since their notices went with the round."""
        self._dirty.update(round_.users)
        self._must_read.update(round_.users)

    def cut(self, user: str, start: str, events: Sequence[Event], trimmed: str, *,
            more: bool = False, now: float = 0.0) -> list[GatewayBatch]:
        """What a round brought for ``user`` -- every event after ``start`` up
        to the last, with ``trimmed`` the newest id retention removed -- as
        one message per gateway (:func:`~.plan.plan`, :func:`~.plan.by_gateway`).

        Cursors advance past what is sent. A connection that gets a lost batch
        is dropped: its gateway re-attaches or resyncs it. A read full by
        count, or cut by its byte budget (``more``, at monotonic ``now``: it is
        then paced, see :meth:`take_round`), leaves the user dirty, to read on
        from where it ended."""
        attachments = self._users.get(user, {})
        batches = plan(list(attachments.values()), events, start=start, trimmed=trimmed)
        for batch in batches:
            if batch.lost:
                attachments.pop(batch.attachment.conn, None)
        if more and self.pace:
            self._paced[user] = now + self.pace
        if more or len(events) >= self.batch:
            self._mark(user, read=True)
        return by_gateway(batches)

    def defer(self, user: str) -> None:
        """A user whose events a round read but could not send (the round's
        byte budget for one of its gateways was spent): read it next round,
        from its unchanged cursors."""
        if user in self._users:
            self._mark(user, read=True)

    # -- gateways ------------------------------------------------------------------

    def gateways_of(self, user: str) -> set[str]:
        """The gateways with a connection of ``user`` attached here."""
        return {a.gateway for a in self._users.get(user, {}).values()}

    def gateways(self) -> list[str]:
        """The gateways with connections attached here, sorted."""
        return sorted({a.gateway for attachments in self._users.values() for a in attachments.values()})

    def drop_gateway(self, gateway: str) -> list[str]:
        """Forget every connection of ``gateway``; return the users left with
        no attachment (the caller unsubscribes from their notify channels)."""
        gone: list[str] = []
        for user, attachments in list(self._users.items()):
            mine = [conn for conn, att in attachments.items() if att.gateway == gateway]
            for conn in mine:
                del attachments[conn]
            if mine and not attachments:
                self._forget(user)
                gone.append(user)
        return gone

    # -- internals -----------------------------------------------------------------

    def _mark(self, user: str, *, read: bool) -> None:
        self._dirty.add(user)
        if read:
            self._must_read.add(user)

    def _forget(self, user: str) -> None:
        del self._users[user]
        self._notices.pop(user, None)
        self._notice_bytes.pop(user, None)
        self._paced.pop(user, None)


class GatewayWatch:
    """When a gateway that has connections attached here is gone.

    A gateway subscribes to its delivery channel for as long as it runs, so a
    channel with no subscriber means it stopped -- or is between two
    subscriptions, which is why one silent sweep is not enough. A gateway that
    comes back attaches all its connections again on its own, so dropping too
    late costs only work, and dropping too early only a re-attach."""

    def __init__(self, sweeps: int = 2):
        self.sweeps = sweeps  #: silent sweeps in a row before a gateway counts as gone
        self._silent: dict[str, int] = {}

    def heard(self, gateway: str) -> None:
        """The gateway listens (it had a subscriber or received a delivery)."""
        self._silent.pop(gateway, None)

    def silent(self, gateway: str) -> bool:
        """A sweep found no subscriber; True when the gateway is now gone
        (its attachments should be dropped)."""
        count = self._silent.pop(gateway, 0) + 1
        if count < self.sweeps:
            self._silent[gateway] = count
            return False
        return True
