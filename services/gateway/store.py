"""The gateway's Redis operations: accept a message, store an offset, read the
state of the outbound stream. Each is one script (``shared/lua``: ``accept``,
``store_offset``, ``stream_state``) in the user's slot, so it is atomic, and
costs one round trip (accept: with its work notice).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from switchboard.shared import keys, outbound, scripts
from switchboard.shared.connection import execute_scripted, queue_script
from switchboard.shared.fields import WorkField
from switchboard.shared.settings import StreamSettings

from .resume import StreamState, parse_offset

class GatewayStore:
    def __init__(self, redis: aioredis.Redis, streams: StreamSettings):
        self.redis = redis
        self.streams = streams
        registered = scripts.register(redis, "accept", "stream_state", "store_offset")
        self._accept = registered["accept"]
        self._state = registered["stream_state"]
        self._store_offset = registered["store_offset"]

    async def load(self) -> None:
        """Load the accept script (at start: else the first accept after a
        Redis start meets NOSCRIPT, and sends its notice twice, harmlessly)."""
        await self.redis.script_load(self._accept.script)

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
        return (keys.work(keys.work_shard(user, self.streams.work_shards)),
                {WorkField.USER: user, WorkField.CONV: conversation})

    async def stream_state(self, user: str, device: str, window: int) -> tuple[StreamState, tuple[str, str] | None]:
        epoch, trimmed, last, start, stored = await self._state(
            keys=[keys.outbound(user), keys.meta(user), keys.offsets(user)],
            args=[outbound.new_epoch(), window, device],
        )
        return StreamState(epoch=epoch, trimmed=trimmed, last_id=last, window_start=start), parse_offset(stored)

    async def store_offset(self, user: str, device: str, epoch: str, entry_id: str) -> bool:
        return bool(await self._store_offset(keys=[keys.offsets(user)], args=[device, epoch, entry_id]))
