"""The gateway's Redis operations: accept a message, store an offset, read the
state of the outbound stream. Each is one script (``shared/lua``: ``accept``,
``store_offset``, ``stream_state``) in the user's slot, so it is atomic, and
costs one round trip -- accept two when it must send a work notice (the work
streams live in other slots).

With ENCRYPTION_KEYS set, the text of a message is sealed here, before the
accept script stores it (its inbound entry and its ``user`` event); the
script is told the plain text's size, which the byte quota counts.
"""

from __future__ import annotations

from typing import NamedTuple

import redis.asyncio as aioredis

from switchboard.shared import keys, outbound, scripts
from switchboard.shared.connection import (NotReplicated, execute_scripted, queue_script, run_replicated,
                                           touch_replicated)
from switchboard.shared.encryption import Keyring
from switchboard.shared.errors import SwitchboardError
from switchboard.shared.fields import ConvField, WorkField
from switchboard.shared.project import DEFAULT_GRAPH
from switchboard.shared.settings import QuotaSettings, RedisSettings, StreamSettings

from .resume import StreamState, parse_offset


class Accepted(NamedTuple):
    id: str  #: the message's entry id (the same for every repeat of its client_msg_id)
    fresh: bool  #: False for a repeat: nothing was appended


class Cancelled(NamedTuple):
    id: str  #: the entry marked cancelled (its turn ends with a ``cancelled`` event)


class Fork(NamedTuple):
    """A ``regenerate`` or ``edit`` to accept (time travel): where the
    conversation forks, found by the gateway at ``done``/``generation``
    (the accept refuses it, ``busy``, if a turn ran since)."""

    kind: str  #: ``edit`` or ``regenerate``
    replaced: str  #: the client_msg_id of the message replaced (an edit), or whose reply is (a regenerate)
    base: str  #: the checkpoint id the turn runs on ('': the empty state)
    done: str
    generation: int
    human: str = ""  #: a regenerate: the id of the message run again ('': a new message, ``in-<entry>``)
    dedup_id: str = ""  #: the id a resend is known by ('': the client_msg_id)


class Resumed(NamedTuple):
    id: str  #: the interrupted entry, which now runs on with the value


class NotInterrupted(NamedTuple):
    resumed: str | None  #: the entry resumed already (a second ``resume``), or None: no such interrupt pending


class NotRunning(NamedTuple):
    running: str | None  #: the entry that runs instead (``client_msg_id`` named another), or None: none waits


#: Characters of a default title (the start of a conversation's first message).
DEFAULT_TITLE_LENGTH = 60


def default_title(text: str) -> str:
    """A conversation's title until it is renamed: the start of its first
    message, its whitespace collapsed, cut at a word within
    DEFAULT_TITLE_LENGTH characters (with an ellipsis when cut)."""
    words = " ".join(text.split())
    if len(words) <= DEFAULT_TITLE_LENGTH:
        return words
    cut = words[:DEFAULT_TITLE_LENGTH - 1]
    if " " in cut[DEFAULT_TITLE_LENGTH // 2:]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


class ConversationRow(NamedTuple):
    """One conversation as ``list_conversations.lua`` lists it (title as stored: sealed)."""

    id: str
    updated_ms: int
    title: str | None
    created_ms: int | None
    count: int
    graph: str | None
    interrupt_cmid: str | None = None  #: the turn waiting for a ``resume`` (its client_msg_id), if any
    interrupt_text: str | None = None  #: its ``interrupt`` event's text, as stored (sealed)


class OverLimit(SwitchboardError):
    """A quota refused the message; nothing was written."""

    def __init__(self, code: str, retry_after_ms: int):
        super().__init__(code)
        self.code = code  #: an ``ErrorCode`` value (``rate_limited``, ``backlog_full`` ...)
        self.retry_after_ms = retry_after_ms  #: when waiting helps (0: it does not)


class GatewayStore:
    def __init__(self, redis: aioredis.Redis, streams: StreamSettings,
                 quotas: QuotaSettings = QuotaSettings.unlimited(), keyring: Keyring | None = None,
                 replicas: RedisSettings = RedisSettings()):
        # The gateway passes its QUOTAS and keys; tests and benchmarks that
        # load streams in bulk use none.
        self.redis = redis
        #: ``wait_replicas``: an accept is done only once on that many replicas
        self.replicas = replicas
        self.streams = streams
        self.quotas = quotas
        self.keyring = keyring or Keyring()  #: seals the text stored (no keys: as it is)
        registered = scripts.register(redis, "accept", "stream_state", "store_offset", "cancel",
                                      "list_conversations", "rename", "clear", "resume")
        self._resume = registered["resume"]
        self._clear = registered["clear"]
        self._list = registered["list_conversations"]
        self._rename = registered["rename"]
        self._cancel = registered["cancel"]
        self._accept = registered["accept"]
        self._state = registered["stream_state"]
        self._store_offset = registered["store_offset"]

    async def load(self) -> None:
        """Load the accept script (at start: else the first accept after a
        Redis start meets NOSCRIPT and is sent twice)."""
        await self.redis.script_load(self._accept.script)

    async def accept(self, user: str, device: str, conversation: str, client_msg_id: str,
                     text: str, *, graph: str = "", default_graph: str = DEFAULT_GRAPH,
                     if_busy: str = "enqueue", fork: Fork | None = None) -> Accepted:
        """Durably append a message, or raise :class:`OverLimit`.

        A ``client_msg_id`` seen before (within DEDUP_TTL) returns the id it got
        then and appends nothing. The work notice goes out only when the
        script asks for it (see ``accept.lua``): a conversation with messages
        waiting already has one, and a repeat costs no work.
        """
        script_keys, args = self._accept_call(user, device, conversation, client_msg_id, text, graph, default_graph,
                                              if_busy, fork)
        try:
            reply = await run_replicated(self.redis, self.replicas, self._accept, script_keys, args)
        except NotReplicated as late:
            # Stored on the master, so its work notice goes out as for any
            # accept; the client, told `unavailable`, resends (a repeat).
            if late.reply[0] != "limit" and int(late.reply[2]):
                await self.redis.xadd(*self._work_notice(user, conversation))
            raise
        status, in_id, extra = reply[:3]
        if status == "limit":
            raise OverLimit(in_id, int(extra))
        if int(extra):
            await self.redis.xadd(*self._work_notice(user, conversation))
        if status == "repeat":  # written by an earlier call, whose wait may have failed
            await touch_replicated(self.redis, self.replicas, script_keys[0], in_id)
        if status == "new" and int(reply[3]):
            await self._title_first(user, conversation, text)
        return Accepted(in_id, status == "new")

    async def _title_first(self, user: str, conversation: str, text: str) -> None:
        """A first message's default title, sealed, when encryption at rest is
        on (the accept script stores a plain one itself): sealed here, once
        per conversation rather than on every send. A ``rename`` that came
        first is kept."""
        if self.keyring.enabled:
            await self.redis.hsetnx(keys.conversation(user, conversation), ConvField.TITLE,
                                    self.keyring.seal(default_title(text)))

    async def accept_many(self, user: str, device: str, conversation: str,
                          messages: list[tuple[str, str]]) -> list[str]:
        """:meth:`accept` each ``(client_msg_id, text)``, in order, in two round
        trips rather than two per message: for loading a stream in bulk
        (benchmarks). Return the inbound ids."""

        def fill(pipe: aioredis.client.Pipeline) -> None:
            for client_msg_id, text in messages:
                queue_script(pipe, self._accept, *self._accept_call(user, device, conversation, client_msg_id, text))

        replies = await execute_scripted(self.redis, [self._accept], fill)
        refused = [r for r in replies if r[0] == "limit"]
        if refused:
            raise OverLimit(refused[0][1], int(refused[0][2]))
        if any(int(r[2]) for r in replies):
            await self.redis.xadd(*self._work_notice(user, conversation))
        for reply, (_, text) in zip(replies, messages):
            if reply[0] == "new" and int(reply[3]):
                await self._title_first(user, conversation, text)
        return [r[1] for r in replies]

    def _accept_call(self, user: str, device: str, conversation: str, client_msg_id: str,
                     text: str, graph: str = "", default_graph: str = DEFAULT_GRAPH,
                     if_busy: str = "enqueue", fork: Fork | None = None) -> tuple[list, list]:
        """The keys and arguments of the accept script."""
        q = self.quotas
        fork_args = ([fork.kind, fork.replaced, fork.base, fork.human, fork.done, str(fork.generation)] if fork
                     else ["", "", "", "", "", ""])
        dedup_id = fork.dedup_id if fork is not None and fork.dedup_id else client_msg_id
        return (
            [keys.dedup(user, dedup_id), keys.inbound(user, conversation), keys.outbound(user),
             keys.meta(user), keys.conversation(user, conversation), keys.conversations(user), keys.usage(user),
             keys.lease(user, conversation), keys.offsets(user)],
            [conversation, client_msg_id, device, self.keyring.seal(text), outbound.new_epoch(),
             self.streams.outbound_maxlen, self.streams.dedup_ttl, keys.notify(user), q.sends_per_minute,
             q.max_conversations, q.max_messages, q.max_waiting, int(q.renotice_interval * 1000),
             keys.inbound_prefix(user), q.send_bytes_per_minute, len(text.encode()), self.streams.retention_ms,
             graph, default_graph, if_busy, keys.cancels(), user,
             "" if self.keyring.enabled else default_title(text),
             *fork_args],
        )

    async def known(self, user: str, client_msg_id: str) -> str | None:
        """The entry id a client_msg_id was accepted as (within DEDUP_TTL), if it was."""
        return await self.redis.get(keys.dedup(user, client_msg_id))

    async def progress(self, user: str, conversation: str) -> tuple[str, int]:
        """The conversation's ``done`` and generation: where a fork is found (see :class:`Fork`)."""
        done, gen = await self.redis.hmget(keys.conversation(user, conversation), [ConvField.DONE, ConvField.GEN])
        return done or "0-0", int(gen or 0)

    async def cancel(self, user: str, conversation: str, client_msg_id: str | None = None) -> Cancelled | NotRunning:
        """Stop the conversation's running turn (``cancel.lua``): the one named
        by ``client_msg_id``, or whichever runs."""
        reply = await self._cancel(
            keys=[keys.conversation(user, conversation), keys.inbound(user, conversation),
                  keys.dedup(user, client_msg_id) if client_msg_id else keys.conversation(user, conversation)],
            args=[user, conversation, keys.cancels(), client_msg_id or ""])
        if reply[0] == "ok":
            if int(reply[2]):  # held by an interrupt: no drain runs it, a worker must write its end
                await self.redis.xadd(*self._work_notice(user, conversation))
            return Cancelled(reply[1])
        return NotRunning(reply[1] if reply[0] == "other" else None)

    async def list_conversations(self, user: str, *, limit: int,
                                 before: tuple[int, str] | None = None) -> tuple[list[ConversationRow], bool]:
        """A page of the user's conversations, newest first, after ``before``
        (``(updated ms, id)`` of the last one of the previous page); and
        whether more follow."""
        reply = await self._list(keys=[keys.conversations(user)],
                                 args=[keys.conversation(user, ""), str(before[0]) if before else "",
                                       before[1] if before else "", limit])
        rows = [ConversationRow(reply[i], int(float(reply[i + 1])), reply[i + 2] or None,
                                int(reply[i + 3]) if reply[i + 3] else None, int(reply[i + 4]), reply[i + 5] or None,
                                reply[i + 6] or None, reply[i + 7] or None)
                for i in range(1, len(reply), 8)]
        return rows, reply[0] == "1"

    async def clear(self, user: str, device: str, conversation: str, client_msg_id: str | None = None) -> str | None:
        """Queue the clearing of a conversation (``clear.lua``; once per
        ``client_msg_id`` if one is given); its inbound entry id, or None if
        the conversation has had no message."""
        reply = await self._clear(
            keys=[keys.conversation(user, conversation), keys.inbound(user, conversation), keys.usage(user),
                  keys.dedup(user, client_msg_id) if client_msg_id else keys.usage(user)],
            args=[device, self.streams.retention_ms, int(self.quotas.renotice_interval * 1000), client_msg_id or "",
                  self.streams.dedup_ttl])
        if reply[0] == "unknown":
            return None
        if int(reply[2]):
            await self.redis.xadd(*self._work_notice(user, conversation))
        return reply[1]

    async def resume(self, user: str, device: str, conversation: str, client_msg_id: str, interrupt_id: str | None,
                     value_json: str) -> Resumed | NotInterrupted:
        """Answer the interrupt of the turn ``client_msg_id`` (``resume.lua``)
        with ``value_json``: once; every device gets a ``resumed`` event, and
        a worker is told to run the turn on."""
        reply = await self._resume(
            keys=[keys.conversation(user, conversation), keys.inbound(user, conversation), keys.outbound(user),
                  keys.meta(user)],
            args=[client_msg_id, interrupt_id or "", self.keyring.seal(value_json), device, outbound.new_epoch(),
                  self.streams.outbound_maxlen, keys.notify(user), self.streams.retention_ms * 3 // 2, conversation])
        if reply[0] == "ok":
            await self.redis.xadd(*self._work_notice(user, conversation))
            return Resumed(reply[1])
        return NotInterrupted(reply[1] if reply[0] == "already" else None)

    async def generation(self, user: str, conversation: str) -> int:
        """How many times the conversation was cleared (its thread: ``keys.thread_id(..., gen)``)."""
        return int(await self.redis.hget(keys.conversation(user, conversation), ConvField.GEN) or 0)

    async def rename(self, user: str, device: str, conversation: str, title: str) -> str | None:
        """Retitle a conversation (and tell every device: a ``renamed`` event);
        the event id, or None if the conversation has had no message."""
        reply = await self._rename(
            keys=[keys.conversation(user, conversation), keys.outbound(user), keys.meta(user)],
            args=[conversation, self.keyring.seal(title), outbound.new_epoch(), self.streams.outbound_maxlen,
                  keys.notify(user), self.streams.retention_ms * 3 // 2, device])
        return reply[1] if reply[0] == "ok" else None

    def _work_notice(self, user: str, conversation: str) -> tuple[str, dict[str, str]]:
        """The stream and fields of a work notice: "this conversation has
        work" (the worker runs every entry after ``done``, so a notice needs no
        entry id). No MAXLEN: trimming would drop un-acked notices. Workers
        delete each notice once it is done (XACK + XDEL), so the stream holds
        only the backlog."""
        return (keys.work(keys.work_shard(user, self.streams.work_shards)),
                {WorkField.USER: user, WorkField.CONV: conversation})

    async def stream_state(self, user: str, device: str, window: int) -> tuple[StreamState, tuple[str, str] | None]:
        epoch, trimmed, last, start, stored = await self._state(
            keys=[keys.outbound(user), keys.meta(user), keys.offsets(user)],
            args=[outbound.new_epoch(), window, device, self.streams.retention_ms * 3 // 2],
        )
        return StreamState(epoch=epoch, trimmed=trimmed, last_id=last, window_start=start), parse_offset(stored)

    async def store_offset(self, user: str, device: str, epoch: str, entry_id: str) -> bool:
        return bool(await self._store_offset(keys=[keys.offsets(user)],
                                             args=[device, epoch, entry_id, self.streams.retention_ms * 3 // 2]))
