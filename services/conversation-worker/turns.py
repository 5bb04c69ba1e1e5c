"""Running a conversation's turns: in inbound order, exactly one reply each.

A conversation's progress is ``done``: the id of the last inbound entry whose
reply is committed. Under the conversation lease, :meth:`Turns.drain` runs the
next entry after ``done`` until none is left. The reply and the new ``done`` are
written by one Lua script that first checks the lease token and the expected
``done`` -- so a reply is written once, by the lease holder, or not at all.

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
from langchain_core.messages import HumanMessage
from langgraph.graph.state import CompiledStateGraph

from switchboard.shared import keys, outbound
from switchboard.shared.protocol import EventKind
from switchboard.shared.settings import WorkerSettings

from .lease import LeaseLost, Leases

log = logging.getLogger(__name__)

#: Inbound entries scanned per round trip when looking for a conversation's next.
SCAN_PAGE = 200

# KEYS: lease, conv, out, meta
# ARGV: token, expected_done, new_done, new_epoch, maxlen, channel, fields...
_COMMIT = outbound.APPEND_LUA + r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'', 'lease'} end
local done = redis.call('HGET', KEYS[2], 'done') or '0-0'
if done ~= ARGV[2] then return {done, 'stale'} end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
local r = append_event(KEYS[3], KEYS[4], ARGV[6], ARGV[4], tonumber(ARGV[5]), fields)
redis.call('HSET', KEYS[2], 'done', ARGV[3], 'reply', r[1])
return {r[1], 'ok'}
"""


@dataclass(frozen=True)
class InboundEntry:
    id: str
    conversation: str
    client_msg_id: str
    device: str
    text: str


class TurnError(Exception):
    """The graph failed on a message; the user gets a ``turn_error`` event."""


def message_id(entry_id: str) -> str:
    return f"in-{entry_id}"


def reply_after(messages: Sequence[Any], human_id: str) -> str | None:
    """The reply already recorded for the human message ``human_id``, if any:
    the text of the AI messages that follow it, up to the next human message."""
    for index, message in enumerate(messages):
        if getattr(message, "id", None) == human_id:
            texts = []
            for later in messages[index + 1:]:
                kind = getattr(later, "type", "")
                if kind == "human":
                    break
                if kind == "ai":
                    texts.append(_text(later.content))
            return "\n".join(t for t in texts if t) if texts else None
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


class Turns:
    def __init__(self, redis: aioredis.Redis, graph: CompiledStateGraph, settings: WorkerSettings):
        self.redis = redis
        self.graph = graph
        self.settings = settings
        self.leases = Leases(redis, settings.lease_ttl)
        self._commit = redis.register_script(_COMMIT)

    async def drain(self, user: str, conversation: str) -> bool:
        """Run every pending turn of the conversation. Return False if another
        worker holds the lease (it will run them), True when all are done."""
        lease_key = keys.lease(user, conversation)
        token = await self.leases.acquire(lease_key, max_wait=self.settings.lease_ttl * 2)
        if token is None:
            return False
        work = asyncio.create_task(self._drain_locked(user, conversation, token))
        try:
            while not work.done():
                await asyncio.wait([work], timeout=self.settings.lease_ttl / 3)
                if not work.done() and not await self.leases.renew(lease_key, token):
                    work.cancel()
                    raise LeaseLost(f"lease of {user}/{conversation} lost")
            return work.result()
        finally:
            if not work.done():
                work.cancel()
            try:
                await self.leases.release(lease_key, token)
            except Exception:  # noqa: BLE001 - the lease expires on its own
                log.debug("lease release failed for %s/%s", user, conversation)

    async def _drain_locked(self, user: str, conversation: str, token: str) -> bool:
        done = await self.redis.hget(keys.conversation(user, conversation), "done") or "0-0"
        while True:
            entry = await self._next_entry(user, conversation, done)
            if entry is None:
                return True
            kind, text = await self._run(user, entry)
            status, value = await self._write(user, entry, token, done, kind, text)
            if status == "lease":
                raise LeaseLost(f"lease of {user}/{conversation} lost before commit")
            done = entry.id if status == "ok" else value

    async def _next_entry(self, user: str, conversation: str, after: str) -> InboundEntry | None:
        cursor = after
        while True:
            page = await self.redis.xrange(keys.inbound(user), min=f"({cursor}", count=SCAN_PAGE)
            for entry_id, fields in page:
                if fields.get("conv") == conversation:
                    return InboundEntry(entry_id, conversation, fields.get("cmid", ""),
                                        fields.get("dev", ""), fields.get("text", ""))
            if len(page) < SCAN_PAGE:
                return None
            cursor = page[-1][0]

    async def _run(self, user: str, entry: InboundEntry) -> tuple[EventKind, str]:
        config = {"configurable": {"thread_id": keys.thread_id(user, entry.conversation)}}
        human_id = message_id(entry.id)
        try:
            snapshot = await self.graph.aget_state(config)
            reply = reply_after((snapshot.values or {}).get("messages", []), human_id)
            if reply is not None:
                log.info("reusing checkpointed reply user=%s entry=%s", user, entry.id)
                return EventKind.ASSISTANT, reply
            result = await asyncio.wait_for(
                self.graph.ainvoke({"messages": [HumanMessage(content=entry.text, id=human_id)]}, config,
                                   durability="exit"),
                timeout=self.settings.turn_timeout,
            )
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            log.warning("turn timed out user=%s entry=%s", user, entry.id)
            return EventKind.TURN_ERROR, f"the assistant did not answer within {self.settings.turn_timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - a graph bug must not stop the conversation
            log.warning("turn failed user=%s entry=%s: %r", user, entry.id, exc)
            return EventKind.TURN_ERROR, f"the assistant failed on this message ({type(exc).__name__})"
        reply = reply_after(result.get("messages", []) if isinstance(result, dict) else [], human_id)
        return EventKind.ASSISTANT, reply or ""

    async def _write(self, user: str, entry: InboundEntry, token: str, done: str, kind: EventKind,
                     text: str) -> tuple[str, str]:
        fields = outbound.event_fields(kind.value, entry.conversation, text, client_msg_id=entry.client_msg_id,
                                       device_id=None, ts=outbound.now_ms(), inbound_id=entry.id)
        value, status = await self._commit(
            keys=[keys.lease(user, entry.conversation), keys.conversation(user, entry.conversation),
                  keys.outbound(user), keys.meta(user)],
            args=[token, done, entry.id, outbound.new_epoch(), self.settings.streams.outbound_maxlen,
                  keys.notify(user), *fields],
        )
        return status, value
