"""The worker's Redis operations, each one script (``shared/lua``), each
answering with a small result type.

A conversation's progress is ``done``: the id of the last inbound entry whose
reply is committed. :meth:`WorkerStore.begin` takes the lease and finds the
next entry after ``done`` (counting the attempt at it) in one round trip;
:meth:`WorkerStore.commit` writes the reply, the turn's checkpoint and the new
``done`` in one atomic step, checked against the lease token and the expected
``done`` -- so a reply is written once, by the lease holder, or not at all --
and finds the next entry in the same call, releasing the lease when none is
left. A turn is thus two scripts.

With ENCRYPTION_KEYS the text fields are sealed (:mod:`switchboard.shared.encryption`):
an :class:`InboundEntry` holds its text as stored (the turn opens it), the
callers seal the reply and delta text they pass (``store.keyring``), and a
dead letter's text and reason are sealed here.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import logging
from dataclasses import dataclass
from typing import Any, Union

import redis.asyncio as aioredis

from switchboard.shared import keys, outbound, scripts
from switchboard.shared.connection import NotReplicated, run_replicated
from switchboard.shared.encryption import CannotOpen, Keyring
from switchboard.shared.fields import ConvField, DeadField
from switchboard.shared.settings import RedisSettings, StreamSettings

log = logging.getLogger(__name__)

#: Characters of a message's text a dead letter keeps.
DEAD_LETTER_TEXT = 1000


@dataclass(frozen=True)
class InboundEntry:
    """One accepted ``send`` of a conversation."""

    id: str
    conversation: str
    client_msg_id: str
    device: str
    text: str  #: as stored: sealed when encryption at rest is on (``keyring.open`` it)
    graph: str = ""  #: the conversation's graph ('': the default)
    kind: str = ""  #: '': a message; ``clear``: clear the conversation (no graph runs); ``edit``, ``regenerate``
    gen: int = 0  #: the conversation's generation it runs in (its thread: ``keys.thread_id(..., gen)``)
    #: its turn was interrupted and answered: the interrupt's id, and the ``resume`` value (JSON, as stored)
    interrupt_id: str = ""
    resume: str = ""
    base: str = ""  #: ``edit``/``regenerate``: the checkpoint id the turn forks from ('': the empty state)
    human: str = ""  #: ``regenerate``: the id of the message run again ('': ``in-<entry id>``)

    @property
    def forks(self) -> bool:
        """An ``edit`` or ``regenerate``: the turn runs on an earlier checkpoint (time travel)."""
        return self.kind in ("edit", "regenerate")


# -- what follows an entry ----------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """The conversation's next entry, with an attempt at it begun (and counted)."""

    entry: InboundEntry
    number: int  #: 1 for the first attempt
    cancelled: bool = False  #: stopped before it ran: commit a ``cancelled`` event, run nothing


@dataclass(frozen=True)
class FindAfter:
    """Not known yet: find the next entry after ``cursor`` (:meth:`WorkerStore.find_next`)."""

    cursor: str


@dataclass(frozen=True)
class NoneLeft:
    """No entry of the conversation after ``done``."""


Found = Union[Attempt, FindAfter, NoneLeft]


def _found(conversation: str, reply: Sequence[Any]) -> Found:
    if reply[0] == "entry":
        _, entry_id, cmid, device, text, attempt, graph, cancelled, kind, gen, resume, interrupt_id, base, human = reply
        return Attempt(InboundEntry(entry_id, conversation, cmid, device, text, graph, kind, int(gen),
                                    interrupt_id, resume, base, human), int(attempt), cancelled == "1")
    return NoneLeft()


# -- taking a conversation ------------------------------------------------------------


@dataclass(frozen=True)
class Begun:
    """The lease is the caller's."""

    done: str  #: id of the last committed entry ('0-0': none)
    latest: str | None  #: the thread's latest checkpoint pointer (a document key), if any
    found: Found


@dataclass(frozen=True)
class Busy:
    """Another token holds the lease."""

    holder: str


# -- committing a turn ----------------------------------------------------------------


@dataclass(frozen=True)
class Committed:
    reply_id: str  #: the reply's event id
    found: Found  #: the next entry; with :class:`NoneLeft` the lease was released
    cancelled: bool = False  #: the entry was cancelled: written as ``cancelled``, its checkpoint not stored

    @property
    def released(self) -> bool:
        return isinstance(self.found, NoneLeft)


@dataclass(frozen=True)
class AlreadyDone:
    """``done`` already is this entry: the commit ran before (a retried call
    whose answer was lost), or another worker committed the turn."""

    holds_lease: bool


@dataclass(frozen=True)
class DoneMoved:
    """``done`` moved elsewhere since the turn began: nothing was written."""

    done: str


@dataclass(frozen=True)
class LeaseLost:
    """The lease is not the caller's: nothing was written."""


CommitResult = Union[Committed, AlreadyDone, DoneMoved, LeaseLost]


@dataclass(frozen=True)
class CheckpointWrite:
    """A checkpoint document to store with a commit (library format: see
    :mod:`.checkpoint_format`)."""

    key: str
    latest_key: str
    document: bytes
    ttl_ms: int
    index: str  #: the thread's checkpoint index (keys.thread_checkpoints)


def _stage(key: str, document: bytes, pipe: aioredis.client.Pipeline) -> None:
    """Queue a checkpoint's staging (commit.lua places it): the document goes
    to Redis as a command of its own, not as a script argument, which would
    cost the script its size once more."""
    pipe.execute_command("JSON.SET", key, "$", document)
    pipe.pexpire(key, keys.STAGED_TTL_MS)


class WorkerStore:
    def __init__(self, redis: aioredis.Redis, streams: StreamSettings, *, lease_ttl: float,
                 keyring: Keyring | None = None, replicas: RedisSettings = RedisSettings()):
        self.redis = redis
        self.streams = streams
        self.replicas = replicas  #: ``wait_replicas``: a commit waits for that many replicas to have it
        self.keyring = keyring or Keyring()  #: ENCRYPTION_KEYS: opens inbound text, seals what is written
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self._s = scripts.register(redis, "begin", "find_next", "count_attempt", "commit", "renew", "release", "delta")

    async def begin(self, user: str, conversation: str, *, token: str, latest_key: str,
                    resumed: str | None = None) -> Begun | Busy:
        """Take the lease with ``token``; learn ``done``, the latest checkpoint
        pointer and the next entry. ``resumed``: an entry whose attempt this
        process gave up because Redis went away (not counted again)."""
        reply = await self._s["begin"](
            keys=[keys.lease(user, conversation), keys.conversation(user, conversation),
                  keys.inbound(user, conversation), latest_key],
            args=[token, self.lease_ttl_ms, resumed or ""])
        if reply[0] == "busy":
            return Busy(reply[1])
        _, done, latest, *found = reply
        return Begun(done, latest or None, _found(conversation, found))

    async def find_next(self, user: str, conversation: str, *, after: str, token: str) -> Attempt | NoneLeft:
        """The conversation's next entry after ``after`` (its attempt begun), or none."""
        reply = await self._s["find_next"](
            keys=[keys.inbound(user, conversation), keys.conversation(user, conversation)], args=[after, token])
        found = _found(conversation, reply)
        assert not isinstance(found, FindAfter)
        return found

    async def count_attempt(self, user: str, conversation: str, entry_id: str, *, seen: int) -> int:
        """Begin one more attempt at ``entry_id`` after attempt ``seen`` failed."""
        return int(await self._s["count_attempt"](keys=[keys.conversation(user, conversation)],
                                                  args=[entry_id, seen]))

    async def commit(self, user: str, conversation: str, *, token: str, expected_done: str, entry_id: str,
                     fields: list[str], checkpoint: CheckpointWrite | None, latest_key: str | None = None,
                     checkpoint_ttl_ms: int = 0, interrupt_id: str = "", base: str = "") -> CommitResult:
        """Commit the reply event ``fields`` to ``entry_id`` (and ``checkpoint``).

        ``interrupt_id``: the event is the turn's interrupt; the entry stays
        waiting for a ``resume``. ``base``: the thread's ``latest_key`` pointer
        before the turn stored a checkpoint of its own ('-': it had none; '':
        not known), put back if the turn turns out cancelled."""
        lease_key = keys.lease(user, conversation)
        staged = keys.staged_checkpoint(user, conversation, token)
        if checkpoint is not None:
            latest_key, checkpoint_ttl_ms = checkpoint.latest_key, checkpoint.ttl_ms
        checkpoint_keys = [checkpoint.key if checkpoint else lease_key, latest_key or lease_key]
        checkpoint_args = ["1" if checkpoint else "", checkpoint_ttl_ms]
        try:
            reply = await run_replicated(
                self.redis, self.replicas, self._s["commit"],
                [lease_key, keys.conversation(user, conversation), keys.outbound(user), keys.meta(user),
                 keys.inbound(user, conversation), *checkpoint_keys, keys.usage(user), staged,
                 checkpoint.index if checkpoint else lease_key],
                [token, expected_done, entry_id, outbound.new_epoch(), self.streams.outbound_maxlen,
                 keys.notify(user), *checkpoint_args, self.streams.retention_ms, interrupt_id,
                 base if latest_key else "", *fields],
                before=functools.partial(_stage, staged, checkpoint.document) if checkpoint else None)
        except NotReplicated as late:
            # The commit stands on the master (devices may have its event); a
            # failover before the replica has it loses it, and the turn runs
            # again there (docs/guarantees.md). Nothing to undo or retry here.
            log.warning("commit of user=%s conversation=%s entry=%s: %s", user, conversation, entry_id, late,
                        extra={"user": user, "conversation": conversation, "entry": entry_id})
            reply = late.reply
        status = reply[0]
        if status == "ok":
            return Committed(reply[1], _found(conversation, reply[3:]), cancelled=reply[2] == "1")
        if status == "already":
            return AlreadyDone(holds_lease=reply[1] == "1")
        if status == "stale":
            return DoneMoved(reply[1])
        return LeaseLost()

    async def renew(self, user: str, conversation: str, token: str) -> bool:
        return bool(await self._s["renew"](keys=[keys.lease(user, conversation)], args=[token, self.lease_ttl_ms]))

    async def release(self, user: str, conversation: str, token: str) -> None:
        await self._s["release"](keys=[keys.lease(user, conversation)], args=[token])

    async def write_delta(self, user: str, conversation: str, *, token: str, mark: str, fields: list[str]) -> bool:
        """Append a delta event for the lease holder; False when the lease is
        not ``token``'s. ``mark`` names the delta: writing it again is a no-op."""
        return bool(await self._s["delta"](
            keys=[keys.lease(user, conversation), keys.conversation(user, conversation), keys.outbound(user),
                  keys.meta(user)],
            args=[token, mark, outbound.new_epoch(), self.streams.outbound_maxlen, keys.notify(user),
                  self.streams.retention_ms * 3 // 2, *fields]))

    async def attempts(self, user: str, conversation: str) -> tuple[str | None, int]:
        """``(entry, attempts begun at it)`` (tests, operators)."""
        entry, count = await self.redis.hmget(keys.conversation(user, conversation),
                                              [ConvField.ATTEMPT_OF, ConvField.ATTEMPTS])
        return entry, int(count or 0)

    async def dead_letter(self, *, user: str, entry: InboundEntry, reason: str, attempts: int, worker: str,
                          maxlen: int, per_user: int = 0) -> None:
        """Record a message given up on, for an operator (``switchboard deadletters``):
        its first 1,000 characters and the reason (which may quote the text),
        both sealed with keys. A text no key opens is kept as it was stored.

        With ``per_user`` > 0 the whole message is copied first into the user's
        :func:`keys.dead_copies` stream (its newest ``per_user``, aging with the
        user's keys), and the dead letter names the copy (``kept``): that copy
        is what ``switchboard deadletters retry`` queues again."""
        try:
            text = self.keyring.seal(self.keyring.open(entry.text)[:DEAD_LETTER_TEXT])
        except CannotOpen:
            text = entry.text
        kept = ""
        if per_user > 0:
            copies = keys.dead_copies(user)
            kept = await self.redis.xadd(copies, {
                DeadField.CONV: entry.conversation, DeadField.ENTRY: entry.id, DeadField.CMID: entry.client_msg_id,
                DeadField.DEV: entry.device, DeadField.TEXT: entry.text,
                DeadField.GRAPH: entry.graph}, maxlen=per_user, approximate=False)
            if self.streams.retention_ms:
                await self.redis.pexpire(copies, self.streams.retention_ms * 3 // 2)
        await self.redis.xadd(keys.dead_letters(), {
            "user": user, "conv": entry.conversation, "entry": entry.id, "cmid": entry.client_msg_id,
            "text": text, "reason": self.keyring.seal(reason), "attempts": attempts, "worker": worker,
            "ts": outbound.now_ms(), **({"kept": kept} if kept else {}),
        }, maxlen=maxlen, approximate=True)
