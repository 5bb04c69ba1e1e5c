"""The gateway's Redis operations: accept a message, store an offset, read the
state of the outbound stream. Each is one Lua script in the user's slot, so it
is atomic, and costs one round trip (accept: with its work notice).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from switchboard.shared import keys, outbound
from switchboard.shared.connection import execute_scripted, queue_script
from switchboard.shared.settings import StreamSettings

from .resume import StreamState, parse_offset

# KEYS: dedup, in, out, meta
# ARGV: conv, cmid, device, text, ts, new_epoch, out_maxlen, in_maxlen, dedup_ttl, channel
_ACCEPT = outbound.APPEND_LUA + r"""
local known = redis.call('GET', KEYS[1])
if known then return {known, 0} end
local in_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*',
  'conv', ARGV[1], 'cmid', ARGV[2], 'dev', ARGV[3], 'text', ARGV[4], 'ts', ARGV[5])
redis.call('SET', KEYS[1], in_id, 'EX', ARGV[9])
append_event(KEYS[3], KEYS[4], ARGV[10], ARGV[6], tonumber(ARGV[7]), {
  'kind', 'user', 'conv', ARGV[1], 'text', ARGV[4], 'cmid', ARGV[2],
  'dev', ARGV[3], 'ts', ARGV[5], 'in', in_id})
return {in_id, 1}
"""

# KEYS: out, meta, offsets   ARGV: new_epoch, window, device
# Only ids go back to the gateway: the window's entries are read here, in
# Redis, and never sent (a hello of a user with a long stream used to carry
# REPLAY_WINDOW + 1 whole entries just to learn two ids).
_STATE = outbound.APPEND_LUA + r"""
local epoch = ensure_life(KEYS[1], KEYS[2], ARGV[1])
local trimmed = redis.call('HGET', KEYS[2], 'trimmed') or '0-0'
local n = tonumber(ARGV[2])
local last = trimmed
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then last = newest[1][1] end
local start = trimmed
if redis.call('XLEN', KEYS[1]) > n then
  local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', n + 1)
  start = recent[n + 1][1]
end
local stored = redis.call('HGET', KEYS[3], ARGV[3]) or ''
return {epoch, trimmed, last, start, stored}
"""

# KEYS: offsets   ARGV: device, epoch, id
# Offsets only move forward within one epoch: a late ack from an old
# connection must not make a reconnect replay events the device already has.
_STORE_OFFSET = r"""
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local epoch, id = string.match(cur, '^(.*)|(.*)$')
  if epoch == ARGV[2] then
    local ams, aseq = parse(id)
    local bms, bseq = parse(ARGV[3])
    if ams and (ams > bms or (ams == bms and aseq >= bseq)) then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
return 1
"""


class GatewayStore:
    def __init__(self, redis: aioredis.Redis, streams: StreamSettings):
        self.redis = redis
        self.streams = streams
        self._accept = redis.register_script(_ACCEPT)
        self._state = redis.register_script(_STATE)
        self._store_offset = redis.register_script(_STORE_OFFSET)

    async def load(self) -> None:
        """Load the accept script (at start: else the first accept after a
        Redis start meets NOSCRIPT, and sends its notice twice, harmlessly)."""
        await self.redis.script_load(_ACCEPT)

    async def accept(self, user: str, device: str, conversation: str, client_msg_id: str,
                     text: str) -> tuple[str, bool]:
        """Durably append a message; return ``(inbound id, fresh)``.

        A ``client_msg_id`` seen before (within DEDUP_TTL) returns the id it got
        then and appends nothing. Either way the work notice is (re)sent, so a
        gateway that died between the append and the notice is repaired by the
        client's resend.
        """
        # The notice needs nothing from the script's answer and is sent
        # whatever it is, so both go in one round trip: a pipeline runs them
        # in order on one connection.
        script_keys, args = self._accept_call(user, device, conversation, client_msg_id, text)

        def fill(pipe: aioredis.client.Pipeline) -> None:
            queue_script(pipe, self._accept, script_keys, args)
            pipe.xadd(*self._work_notice(user, conversation))

        (in_id, fresh), _ = await execute_scripted(self.redis, [self._accept], fill)
        return in_id, bool(fresh)

    async def accept_many(self, user: str, device: str, conversation: str,
                          messages: list[tuple[str, str]]) -> list[str]:
        """:meth:`accept` each ``(client_msg_id, text)``, in order, in one round
        trip rather than one per message: for loading a stream in bulk
        (benchmarks). Return the inbound ids."""

        def fill(pipe: aioredis.client.Pipeline) -> None:
            for client_msg_id, text in messages:
                queue_script(pipe, self._accept, *self._accept_call(user, device, conversation, client_msg_id, text))
            for _ in messages:
                pipe.xadd(*self._work_notice(user, conversation))

        replies = await execute_scripted(self.redis, [self._accept], fill)
        return [in_id for in_id, _ in replies[:len(messages)]]

    def _accept_call(self, user: str, device: str, conversation: str, client_msg_id: str,
                     text: str) -> tuple[list, list]:
        """The keys and arguments of the accept script."""
        return (
            [keys.dedup(user, client_msg_id), keys.inbound(user), keys.outbound(user), keys.meta(user)],
            [conversation, client_msg_id, device, text, outbound.now_ms(), outbound.new_epoch(),
             self.streams.outbound_maxlen, self.streams.inbound_maxlen, self.streams.dedup_ttl,
             keys.notify(user)],
        )

    def _work_notice(self, user: str, conversation: str) -> tuple[str, dict[str, str]]:
        """The stream and fields of a work notice: "this conversation has
        work" (the worker runs every entry after ``done``, so a notice needs no
        entry id). No MAXLEN: trimming would drop un-acked notices. Workers
        delete each notice once it is done (XACK + XDEL), so the stream holds
        only the backlog."""
        return keys.work(keys.work_shard(user, self.streams.work_shards)), {"user": user, "conv": conversation}

    async def stream_state(self, user: str, device: str, window: int) -> tuple[StreamState, tuple[str, str] | None]:
        epoch, trimmed, last, start, stored = await self._state(
            keys=[keys.outbound(user), keys.meta(user), keys.offsets(user)],
            args=[outbound.new_epoch(), window, device],
        )
        return StreamState(epoch=epoch, trimmed=trimmed, last_id=last, window_start=start), parse_offset(stored)

    async def store_offset(self, user: str, device: str, epoch: str, entry_id: str) -> bool:
        return bool(await self._store_offset(keys=[keys.offsets(user)], args=[device, epoch, entry_id]))
