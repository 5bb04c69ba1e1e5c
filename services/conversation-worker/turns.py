"""Running a conversation's turns: in inbound order, exactly one reply each.

A conversation's progress is ``done``: the id of the last inbound entry whose
reply is committed. Under the conversation lease, :meth:`Turns.drain` runs the
next entry after ``done`` until none is left. The reply and the new ``done`` are
written by one Lua script that first checks the lease token and the expected
``done`` -- so a reply is written once, by the lease holder, or not at all.

Round trips are few because a turn is on the hot path: one script takes the
lease and finds the first entry (counting the attempt at it); the commit script
finds the next one the same way, and releases the lease when none is left. A
turn is thus two scripts plus the checkpoint write.

Re-running a turn is safe: the user's message enters the graph with the id
``in-<entry id>``, so a worker that finds that message already in the
checkpoint (its predecessor died after checkpointing, before committing)
reuses the reply the checkpoint holds instead of running the graph again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from langchain_core.messages import HumanMessage
from langgraph.graph.state import CompiledStateGraph

from switchboard.shared import keys, outbound
from switchboard.shared.protocol import EventKind
from switchboard.shared.settings import WorkerSettings

from .deltas import DeltaWriter, content_text
from .fencing import STORE_LUA, FencedRedisSaver, fence_config
from .lease import LeaseLost, Leases

log = logging.getLogger(__name__)

#: Inbound entries scanned per round trip when looking for a conversation's next.
SCAN_PAGE = 200

#: Seconds a drain whose lease renewal failed waits for its work to finish:
#: the last commit releases the lease, and its reply may still be on its way.
RELEASE_GRACE = 1.0

#: Conversations whose turns since their last prune are counted (a bound).
UNPRUNED_MAX = 100_000

# `begin_attempt` counts an attempt at an entry durably *before* it runs -- so a
# message that crashes the worker process is counted too (a poison message).
# `next_entry` finds the conversation's next inbound entry after `after` within
# one page of the user's inbound stream and begins an attempt at it. It returns
# {'entry', id, cmid, dev, text, attempt}, {'more', last id scanned} (a full
# page of other conversations' entries) or {'none'}.
_ENTRIES = r"""
local function begin_attempt(conv, id)
  if redis.call('HGET', conv, 'attempt_of') == id then
    return redis.call('HINCRBY', conv, 'attempts', 1)
  end
  redis.call('HSET', conv, 'attempt_of', id, 'attempts', 1)
  return 1
end

local function next_entry(inbound, conv, after, conversation, page)
  local entries = redis.call('XRANGE', inbound, '(' .. after, '+', 'COUNT', page)
  for _, e in ipairs(entries) do
    local f = {}
    for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
    if f['conv'] == conversation then
      return {'entry', e[1], f['cmid'] or '', f['dev'] or '', f['text'] or '', begin_attempt(conv, e[1])}
    end
  end
  if #entries >= page then return {'more', entries[#entries][1]} end
  return {'none'}
end
"""

# KEYS: inbound, conv   ARGV: after, conversation, page  (scanning on past a full page)
_SCAN = _ENTRIES + r"""
return next_entry(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]))
"""

# KEYS: conv   ARGV: inbound id  (a retry in place: one more attempt)
_BEGIN_ATTEMPT = _ENTRIES + r"""
return begin_attempt(KEYS[1], ARGV[1])
"""

# Taking a conversation in one round trip: the lease, where it stands (`done`,
# the newest checkpoint's id) and its next entry.
# KEYS: lease, conv, inbound   ARGV: token, lease ttl ms, conversation, page
_BEGIN = _ENTRIES + r"""
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'busy', redis.call('GET', KEYS[1]) or ''}
end
local state = redis.call('HMGET', KEYS[2], 'done', 'ckpt')
local done = state[1] or '0-0'
local found = next_entry(KEYS[3], KEYS[2], done, ARGV[3], tonumber(ARGV[4]))
return {'ok', done, state[2] or '', unpack(found)}
"""

# The reply, exactly once: written only by the lease holder, only if `done` is
# where the turn started. Then the next entry, in the same round trip; with
# none left the lease is released here too.
# The turn's checkpoint (if the graph wrote one) is stored in the same step.
# KEYS: lease, conv, out, meta, inbound, checkpoint, latest checkpoint
# ARGV: token, expected_done, new_done, new_epoch, maxlen, channel, conversation, page,
#       checkpoint id ('' for none), checkpoint document, checkpoint ttl ms, fields...
_COMMIT = outbound.APPEND_LUA + STORE_LUA + _ENTRIES + r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lease', ''} end
local done = redis.call('HGET', KEYS[2], 'done') or '0-0'
if done ~= ARGV[2] then return {'stale', done} end
if ARGV[9] ~= '' then store_checkpoint(KEYS[2], KEYS[6], KEYS[7], ARGV[9], ARGV[10], ARGV[11]) end
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
local r = append_event(KEYS[3], KEYS[4], ARGV[6], ARGV[4], tonumber(ARGV[5]), fields)
redis.call('HSET', KEYS[2], 'done', ARGV[3], 'reply', r[1])
redis.call('HDEL', KEYS[2], 'attempt_of', 'attempts')
local found = next_entry(KEYS[5], KEYS[2], ARGV[3], ARGV[7], tonumber(ARGV[8]))
if found[1] == 'none' then redis.call('DEL', KEYS[1]) end
return {'ok', r[1], unpack(found)}
"""


def _retrieve(task: asyncio.Task) -> None:
    """Mark a task's exception as seen; the caller reports it (or has moved on)."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class InboundEntry:
    id: str
    conversation: str
    client_msg_id: str
    device: str
    text: str


class TurnFailed(Exception):
    """One attempt at a turn failed in the graph (raised, or ran too long)."""

    def __init__(self, reason: str, public: str):
        super().__init__(reason)
        self.reason = reason  #: for logs and the dead-letter entry
        self.public = public  #: for the user's ``turn_error`` event


def message_id(entry_id: str) -> str:
    return f"in-{entry_id}"


def reply_after(messages: Sequence[Any], human_id: str) -> str | None:
    """The reply already recorded for the human message ``human_id``, if any:
    the text of the AI messages that follow it, up to the next human message."""
    # From the end: the message is the newest human one, or close to it.
    for index in range(len(messages) - 1, -1, -1):
        if getattr(messages[index], "id", None) == human_id:
            texts = []
            for later in messages[index + 1:]:
                kind = getattr(later, "type", "")
                if kind == "human":
                    break
                if kind == "ai":
                    texts.append(content_text(later.content))
            return "\n".join(t for t in texts if t) if texts else None
    return None


@dataclass(frozen=True)
class Next:
    """Where a scan left off: an entry to run (with its attempt number), a
    cursor to scan on from, or nothing left."""

    entry: InboundEntry | None = None
    attempt: int = 0
    cursor: str | None = None


def _parse_next(conversation: str, reply: Sequence[Any]) -> Next:
    if reply[0] == "entry":
        _, entry_id, cmid, device, text, attempt = reply
        return Next(InboundEntry(entry_id, conversation, cmid, device, text), int(attempt))
    if reply[0] == "more":
        return Next(cursor=reply[1])
    return Next()


class Turns:
    def __init__(self, redis: aioredis.Redis, graph: CompiledStateGraph, settings: WorkerSettings):
        self.redis = redis
        self.graph = graph
        self.settings = settings
        self.leases = Leases(redis, settings.lease_ttl)
        self._begin = redis.register_script(_BEGIN)
        self._commit = redis.register_script(_COMMIT)
        self._scan = redis.register_script(_SCAN)
        self._begin_attempt = redis.register_script(_BEGIN_ATTEMPT)
        self.deltas = (DeltaWriter(redis, interval=settings.delta_interval, maxlen=settings.streams.outbound_maxlen)
                       if settings.stream_deltas else None)
        saver = graph.checkpointer
        self.saver = saver if isinstance(saver, FencedRedisSaver) else None
        self._unpruned: dict[str, int] = {}  # turns committed per thread since its last prune
        self._tokens: set[str] = set()  # lease tokens of the drains running now

    async def drain(self, user: str, conversation: str) -> bool:
        """Run every pending turn of the conversation. Return False if another
        worker holds the lease (it will run them), True when all are done."""
        lease_key = keys.lease(user, conversation)
        begun = await self._take(user, conversation, max_wait=self.settings.lease_ttl * 2)
        if begun is None:
            return False
        token, done, first = begun
        self._tokens.add(token)
        work = asyncio.create_task(self._drain_locked(user, conversation, token, done, first))
        work.add_done_callback(_retrieve)
        released = ok = False
        try:
            while not work.done():
                await asyncio.wait([work], timeout=self.settings.lease_ttl / 3)
                if not work.done() and not await self.leases.renew(lease_key, token):
                    # Either the lease was lost, or the commit that found nothing
                    # left released it and its reply is on its way: let the work
                    # finish (every write it could still make is fenced), then stop it.
                    await asyncio.wait([work], timeout=RELEASE_GRACE)
                    if not work.done():
                        work.cancel()
                        raise LeaseLost(f"lease of {user}/{conversation} lost")
            released = work.result()
            ok = True
        finally:
            if not ok and self.saver is not None:
                self.saver.forget(keys.thread_id(user, conversation))
            if not work.done():
                work.cancel()
            if not released:
                try:
                    await self.leases.release(lease_key, token)
                except Exception:  # noqa: BLE001 - it expires, or this process takes it back
                    log.debug("lease release failed for %s/%s", user, conversation)
            self._tokens.discard(token)
        await self._prune(keys.thread_id(user, conversation))
        return True

    async def _prune(self, thread_id: str) -> None:
        """Keep the newest ``CHECKPOINT_KEEP`` checkpoints of a conversation.

        Every checkpoint holds the whole conversation, so keeping them all
        costs storage that grows with the *square* of its length. The library
        prunes (documents, pending writes, registry); it is asked once every
        ``CHECKPOINT_KEEP / 2`` turns, so the cost per turn stays small and at
        most ``1.5 * CHECKPOINT_KEEP`` checkpoints exist. Pruning only ever
        removes older checkpoints, so it needs no lease."""
        keep = self.settings.checkpoint_keep
        if keep <= 0 or self.saver is None:
            return
        count = self._unpruned.get(thread_id, 0)
        if count < max(1, keep // 2):
            return
        self._unpruned.pop(thread_id, None)
        try:
            await self.saver.aprune([thread_id], keep_last=keep)
        except Exception as exc:  # noqa: BLE001 - storage is reclaimed on a later turn
            log.warning("pruning checkpoints of %s failed: %s", thread_id, exc)

    async def _take(self, user: str, conversation: str, *, max_wait: float) -> tuple[str, str, Next] | None:
        """Take the lease (waiting with back-off up to ``max_wait`` seconds)
        and learn, in the same call, ``done`` and the next entry to run."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        delay = 0.01
        keys_ = [keys.lease(user, conversation), keys.conversation(user, conversation), keys.inbound(user)]
        while True:
            token = self.leases.new_token()
            reply = await self._begin(keys=keys_, args=[token, self.leases.ttl_ms, conversation, SCAN_PAGE])
            if reply[0] == "ok":
                _, done, newest, *found = reply
                if self.saver is not None:
                    self.saver.validate(keys.thread_id(user, conversation), newest or None)
                return token, done, _parse_next(conversation, found)
            holder = reply[1] if len(reply) > 1 else ""
            if self.leases.is_orphan(holder, self._tokens):
                log.info("taking back %s/%s: its lease was left by this process", user, conversation)
                await self.leases.release(keys_[0], holder)
                continue
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _drain_locked(self, user: str, conversation: str, token: str, done: str, found: Next) -> bool:
        """Run the turns; True if the last commit released the lease."""
        while True:
            if found.entry is None:
                found = await self._scan_on(user, conversation, found.cursor)
                if found.entry is None:
                    return False
            entry = found.entry
            kind, text = await self._turn(user, entry, token, found.attempt)
            status, value, rest = await self._write(user, entry, token, done, kind, text)
            if status == "lease":
                raise LeaseLost(f"lease of {user}/{conversation} lost before commit")
            if status != "ok":  # `done` moved under us: scan again from where it is
                if self.saver is not None:  # and the turn's checkpoint was not stored
                    self.saver.forget(keys.thread_id(user, conversation))
                done, found = value, Next(cursor=value)
                continue
            done = entry.id
            thread = keys.thread_id(user, conversation)
            if len(self._unpruned) >= UNPRUNED_MAX and thread not in self._unpruned:
                self._unpruned.clear()  # bounded; a forgotten count only delays a prune
            self._unpruned[thread] = self._unpruned.get(thread, 0) + 1
            found = _parse_next(conversation, rest)
            if found.entry is None and found.cursor is None:
                return True  # nothing left: the commit released the lease

    async def _scan_on(self, user: str, conversation: str, cursor: str | None) -> Next:
        """Scan on from ``cursor`` (after a full page of other conversations'
        entries, or after ``done`` moved), a page per round trip, to the
        conversation's next entry (its attempt begun) or to the end."""
        found = Next(cursor=cursor)
        while found.entry is None and found.cursor is not None:
            reply = await self._scan(keys=[keys.inbound(user), keys.conversation(user, conversation)],
                                     args=[found.cursor, conversation, SCAN_PAGE])
            found = _parse_next(conversation, reply)
        return found

    async def _turn(self, user: str, entry: InboundEntry, token: str, attempt: int) -> tuple[EventKind, str]:
        """Run one turn with bounded attempts (``attempt`` is already counted);
        after the last failed attempt the message is dead-lettered and
        answered with ``turn_error``."""
        limit = self.settings.max_attempts
        while True:
            if attempt > limit:
                # Every earlier attempt ended with the worker gone (killed,
                # crashed, out of memory) before it could record the outcome.
                await self._dead_letter(user, entry, f"the worker stopped during each of {limit} attempts", limit)
                return EventKind.TURN_ERROR, "the assistant could not process this message"
            try:
                return EventKind.ASSISTANT, await self._run(user, entry, token, first=attempt == 1)
            except TurnFailed as failed:
                log.warning("turn failed user=%s entry=%s attempt %d/%d: %s", user, entry.id, attempt, limit,
                            failed.reason)
                if self.saver is not None:
                    # A failed attempt's output is discarded: a checkpoint it
                    # left waiting (say, it timed out just after LangGraph handed
                    # it over) is neither retried from nor committed.
                    self.saver.forget(keys.thread_id(user, entry.conversation))
                if attempt >= limit:
                    await self._dead_letter(user, entry, failed.reason, attempt)
                    return EventKind.TURN_ERROR, failed.public
                await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 5.0))
            attempt = int(await self._begin_attempt(keys=[keys.conversation(user, entry.conversation)],
                                                    args=[entry.id]))

    async def _run(self, user: str, entry: InboundEntry, token: str, *, first: bool) -> str:
        """One attempt: the reply text, or :class:`TurnFailed`. Redis errors
        propagate: they are not the message's fault, the drain is retried.

        Only a repeated attempt can find the turn already checkpointed (by a
        worker that died before committing), so only then is the state read
        first -- the first attempt saves that round trip and its decoding."""
        config = {"configurable": {"thread_id": keys.thread_id(user, entry.conversation),
                                   **fence_config(keys.lease(user, entry.conversation), token,
                                                  keys.conversation(user, entry.conversation))}}
        human_id = message_id(entry.id)
        if not first:
            snapshot = await self.graph.aget_state(config)
            reply = reply_after((snapshot.values or {}).get("messages", []), human_id)
            if reply is not None:
                log.info("reusing checkpointed reply user=%s entry=%s", user, entry.id)
                return reply
        stream = None
        if self.deltas is not None:
            stream = self.deltas.stream(user, entry.conversation, token=token, client_msg_id=entry.client_msg_id,
                                        inbound_id=entry.id)
            config["callbacks"] = [stream]
        try:
            result = await asyncio.wait_for(
                self.graph.ainvoke({"messages": [HumanMessage(content=entry.text, id=human_id)]}, config,
                                   durability="exit"),
                timeout=self.settings.turn_timeout,
            )
        except TimeoutError:  # first: TimeoutError is an OSError too
            raise TurnFailed(f"no answer within TURN_TIMEOUT={self.settings.turn_timeout:g} s",
                             f"the assistant did not answer within {self.settings.turn_timeout:g} s") from None
        except (asyncio.CancelledError, LeaseLost, RedisError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - a graph bug must not stop the conversation
            raise TurnFailed(f"{type(exc).__name__}: {exc}"[:500],
                             f"the assistant failed on this message ({type(exc).__name__})") from None
        finally:
            if stream is not None:
                await stream.close()  # no delta may follow the final event
        return reply_after(result.get("messages", []) if isinstance(result, dict) else [], human_id) or ""

    async def _dead_letter(self, user: str, entry: InboundEntry, reason: str, attempts: int) -> None:
        """Record a message given up on, for an operator (``switchboard deadletters``)."""
        await self.redis.xadd(keys.dead_letters(), {
            "user": user, "conv": entry.conversation, "entry": entry.id, "cmid": entry.client_msg_id,
            "text": entry.text[:1000], "reason": reason, "attempts": attempts,
            "worker": self.settings.server_id, "ts": outbound.now_ms(),
        }, maxlen=self.settings.dead_letter_maxlen, approximate=True)
        log.error("dead-lettered user=%s conv=%s entry=%s after %d attempts: %s",
                  user, entry.conversation, entry.id, attempts, reason)

    async def _write(self, user: str, entry: InboundEntry, token: str, done: str, kind: EventKind,
                     text: str) -> tuple[str, str, list[Any]]:
        """Commit the reply; returns (status, reply id or current done, the
        next-entry scan that followed an ``ok``)."""
        fields = outbound.event_fields(kind.value, entry.conversation, text, client_msg_id=entry.client_msg_id,
                                       device_id=None, ts=outbound.now_ms(), inbound_id=entry.id)
        pending = self.saver.take(keys.thread_id(user, entry.conversation)) if self.saver is not None else None
        checkpoint_keys = pending.keys() if pending else [keys.lease(user, entry.conversation)] * 2
        checkpoint_args = ([pending.checkpoint_id, pending.document, self.saver.ttl_ms] if pending
                           else ["", "", 0])
        status, value, *rest = await self._commit(
            keys=[keys.lease(user, entry.conversation), keys.conversation(user, entry.conversation),
                  keys.outbound(user), keys.meta(user), keys.inbound(user), *checkpoint_keys],
            args=[token, done, entry.id, outbound.new_epoch(), self.settings.streams.outbound_maxlen,
                  keys.notify(user), entry.conversation, SCAN_PAGE, *checkpoint_args, *fields],
        )
        return status, value, rest
