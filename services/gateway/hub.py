"""Delivery from the fanout tier to this gateway's connections.

Each connection is *attached* to one live fanout (rendezvous hashing on the
user id over the live fanouts) with the cursor it has delivered up to. Fanouts
publish batches on this gateway's channel; :func:`cursor.accept_batch` decides
what a batch adds. The hub re-attaches a connection, from exactly its cursor,
whenever delivery may have been interrupted:

- its fanout died or restarted (the fanout's liveness key vanished or carries a
  new incarnation),
- this gateway's own subscription was interrupted (pub/sub is at-most-once),
- a batch revealed a gap.

Every outbox is bounded: a connection whose outbox is full is closed with
``SLOW_CONSUMER`` (4008) and reconnects with ``last_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from switchboard.shared import internal, keys
from switchboard.shared.protocol import CloseCode, Frame, encode
from switchboard.shared.tasks import finish, wait_event

from .cursor import Batch
from .outbox import Outbox

log = logging.getLogger(__name__)

#: Seconds between checks of fanout liveness.
MONITOR_INTERVAL = 1.0
#: Seconds during which a connection is not re-attached twice for a gap.
RESYNC_HOLDOFF = 0.25


class Connection:
    """Delivery state of one WebSocket connection (no socket in here)."""

    def __init__(self, conn_id: str, user: str, device: str, epoch: str, last: str,
                 outbox_size: int, close: Callable[[CloseCode, str], None]):
        self.id = conn_id
        self.user = user
        self.device = device
        self.epoch = epoch
        self.last = last  #: newest event id put in the outbox
        self.outbox = Outbox(outbox_size)
        self.fanout: tuple[str, str] | None = None  #: (fanout id, incarnation)
        self._close = close
        self.overflowed = False
        self._last_attach = 0.0

    def offer(self, frames: Sequence[bytes]) -> bool:
        """Queue encoded frames for the socket; on overflow, close the connection (4008)."""
        if self.overflowed:
            return False
        if not self.outbox.offer(frames):
            self.overflowed = True
            self._close(CloseCode.SLOW_CONSUMER, "outbox full; reconnect with last_id")
            return False
        return True

    async def reply(self, frame: Frame) -> None:
        """Queue the answer to one of the client's frames, waiting for room."""
        await self.outbox.put(encode(frame))


def choose_fanout(user: str, live: dict[str, str]) -> str | None:
    """Rendezvous hashing: every gateway picks the same fanout for a user."""
    if not live:
        return None
    return max(live, key=lambda fid: (zlib.crc32(f"{fid}|{user}".encode()), fid))


class DeliveryHub:
    def __init__(self, redis: aioredis.Redis, gateway_id: str):
        # ``redis`` must not decode responses: deliveries are msgpack bytes.
        self.redis = redis
        self.gateway_id = gateway_id
        self.channel = keys.gateway_delivery(gateway_id)
        self.conns: dict[str, Connection] = {}
        self.live: dict[str, str] = {}
        self.ready = asyncio.Event()
        self.closing = asyncio.Event()

    # -- connections ---------------------------------------------------------

    async def add(self, conn: Connection) -> None:
        self.conns[conn.id] = conn
        await self._attach(conn)

    async def remove(self, conn: Connection) -> None:
        self.conns.pop(conn.id, None)
        if conn.fanout is not None:
            message = internal.encode(internal.Detach(conn=conn.id, user=conn.user))
            try:
                await self.redis.publish(keys.fanout_control(conn.fanout[0]), message)
            except RedisError as exc:
                # The fanout drops attachments of dead gateways and of unknown
                # connections on its own; a lost detach costs only a little work.
                log.debug("detach of %s not sent: %s", conn.id, exc)

    async def _attach(self, conn: Connection) -> None:
        conn._last_attach = time.monotonic()
        fid = choose_fanout(conn.user, self.live)
        if fid is None:
            conn.fanout = None  # retried by the monitor when a fanout is live
            return
        message = internal.encode(internal.Attach(gateway=self.gateway_id, conn=conn.id,
                                                  user=conn.user, cursor=conn.last))
        try:
            receivers = await self.redis.publish(keys.fanout_control(fid), message)
        except RedisError as exc:
            log.warning("attach of %s to fanout %s failed: %s", conn.id, fid, exc)
            conn.fanout = None
            return
        conn.fanout = (fid, self.live[fid]) if receivers else None

    # -- running ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.live = await self._read_live()
        except (RedisError, OSError) as exc:
            log.warning("cannot read fanout liveness: %s", exc)
        tasks = [asyncio.create_task(self._listen(), name="hub-listen"),
                 asyncio.create_task(self._monitor(), name="hub-monitor")]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self.closing.set()
            await finish(tasks, grace=2.0)

    async def _listen(self) -> None:
        backoff = 0.1
        while not self.closing.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                if self.ready.is_set():
                    # Deliveries published while we were away are lost: resume
                    # every connection from what it really has.
                    log.warning("delivery subscription restored; re-attaching %d connections", len(self.conns))
                    for conn in list(self.conns.values()):
                        await self._attach(conn)
                self.ready.set()
                backoff = 0.1
                while not self.closing.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message["type"] == "message":
                        await self._on_delivery(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("delivery subscription lost: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    async def _on_delivery(self, data: bytes) -> None:
        try:
            delivery = internal.decode_delivery(data)
        except Exception:  # noqa: BLE001 - a malformed internal message must not stop delivery
            log.exception("undecodable delivery dropped")
            return
        batch: Batch | None = None  # built on first use: deliveries for closed connections cost nothing
        for target in delivery.targets:
            conn = self.conns.get(target.conn)
            if conn is None or conn.overflowed:
                continue
            if target.lost:
                if target.prev == conn.last:
                    conn.overflowed = True  # deliver nothing more on this connection
                    conn._close(CloseCode.RESYNC, "events were trimmed before delivery; reconnect")
                continue
            if batch is None:
                try:
                    batch = Batch(delivery.events)
                except ValueError:
                    log.exception("malformed delivery dropped")
                    return
            start = batch.first_fresh(conn.last, target.prev)
            if start is None:
                if time.monotonic() - conn._last_attach > RESYNC_HOLDOFF:
                    log.info("gap on %s (have %s, batch from %s): re-attaching", conn.id, conn.last, target.prev)
                    await self._attach(conn)
                continue
            if start < len(batch.ids) and conn.offer(batch.frames[start:]):
                conn.last = batch.ids[-1]

    async def _monitor(self) -> None:
        while not self.closing.is_set():
            try:
                self.live = await self._read_live()
            except (RedisError, OSError) as exc:
                log.warning("cannot read fanout liveness: %s", exc)
            else:
                for conn in list(self.conns.values()):
                    if conn.fanout is None or self.live.get(conn.fanout[0]) != conn.fanout[1]:
                        await self._attach(conn)
            await wait_event(self.closing, MONITOR_INTERVAL)

    async def _read_live(self) -> dict[str, str]:
        members = sorted(m.decode() for m in await self.redis.smembers(keys.fanout_members()))
        if not members:
            return {}
        values = await self.redis.mget([keys.fanout_alive(m) for m in members])
        return {m: v.decode() for m, v in zip(members, values) if v is not None}
