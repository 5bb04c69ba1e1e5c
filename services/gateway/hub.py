"""Delivery from the fanout tier to this gateway's connections.

Each connection is *attached* to one live fanout (rendezvous hashing on the
user id over the live fanouts) with the cursor it has delivered up to. Fanouts
publish batches on this gateway's channel; :mod:`.cursor` decides what a batch
adds. The hub re-attaches a connection, from exactly its cursor, whenever
delivery may have been interrupted:

- its fanout died or restarted (the fanout's liveness key vanished or carries a
  new incarnation),
- this gateway's own subscription was interrupted (pub/sub is at-most-once),
- a batch revealed a gap.

Every outbox is bounded, and the user's outbound stream in Redis is where
events wait, not the gateway: when a batch does not fit, the connection takes
what fits and is *paused* -- detached from its fanout, so nothing more is read
for it -- until its outbox is half empty; then it is attached again from its
cursor. A replay of any length thus flows at the pace the client reads. A
connection whose outbox stays full for ``SLOW_CONSUMER_AFTER`` seconds is
closed with ``SLOW_CONSUMER`` (4008) and reconnects with ``last_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable

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
#: Seconds a paused connection may wait for room in its outbox before it is
#: closed as a slow consumer.
SLOW_CONSUMER_AFTER = 10.0


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
        self.closed = False  #: being closed: deliver nothing more
        self.resumer: asyncio.Task | None = None  #: set while paused (see the module docstring)
        self._last_attach = 0.0

    @property
    def paused(self) -> bool:
        return self.resumer is not None

    def close(self, code: CloseCode, why: str) -> None:
        self.closed = True
        self._close(code, why)

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
        if conn.resumer is not None:
            conn.resumer.cancel()
        await self._detach(conn)

    async def _attach(self, conn: Connection) -> None:
        if conn.paused:
            return  # its resumer attaches it once its outbox has room
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

    async def _detach(self, conn: Connection) -> None:
        if conn.fanout is None:
            return
        message = internal.encode(internal.Detach(conn=conn.id, user=conn.user))
        try:
            await self.redis.publish(keys.fanout_control(conn.fanout[0]), message)
        except RedisError as exc:
            # The fanout drops attachments of dead gateways and of unknown
            # connections on its own; a lost detach costs only a little work
            # (deliveries to a paused connection are ignored).
            log.debug("detach of %s not sent: %s", conn.id, exc)

    # -- pausing -----------------------------------------------------------------

    def _pause(self, conn: Connection) -> None:
        log.debug("pausing %s at %s: outbox full", conn.id, conn.last)
        conn.resumer = asyncio.create_task(self._resume_when_drained(conn), name=f"resume-{conn.id}")
        conn.resumer.add_done_callback(_log_failure)

    async def _resume_when_drained(self, conn: Connection) -> None:
        """Stop reading for a connection until half its outbox is free, then
        attach it again from its cursor (what it was sent up to)."""
        await self._detach(conn)
        try:
            await asyncio.wait_for(conn.outbox.wait_room(max(1, conn.outbox.size // 2)), SLOW_CONSUMER_AFTER)
        except TimeoutError:
            conn.close(CloseCode.SLOW_CONSUMER,
                       f"outbox full for {SLOW_CONSUMER_AFTER:g} s; reconnect with last_id")
            return
        conn.resumer = None
        if self.conns.get(conn.id) is conn:
            await self._attach(conn)

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
            if conn is None or conn.closed or conn.paused:
                continue  # a paused connection is attached again from its cursor
            if target.lost:
                if target.prev == conn.last:
                    conn.close(CloseCode.RESYNC, "events were trimmed before delivery; reconnect")
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
            fresh = batch.frames[start:]
            taken = conn.outbox.offer(fresh)
            if taken:
                conn.last = batch.ids[start + taken - 1]
            if taken < len(fresh):
                self._pause(conn)

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


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
