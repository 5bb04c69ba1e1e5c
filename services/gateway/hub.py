"""Delivery from the fanout tier to this gateway's connections.

Each connection is *attached* to one live fanout (rendezvous hashing on the
user id over the live fanouts) with the cursor it has delivered up to. Fanouts
publish batches on this gateway's channel. What a batch does to a connection
-- deliver, pause, re-attach, resync, nothing -- is decided by its
:class:`~.delivery.DeliveryState` (no I/O, tested on its own); the hub only
carries the decisions out: it queues frames, publishes attach and detach
messages, runs the wait of a paused connection, and closes. The hub
re-attaches a connection, from exactly its cursor, whenever delivery may have
been interrupted:

- its fanout died or restarted (the fanout's liveness key vanished or carries a
  new incarnation),
- this gateway's own subscription was interrupted (pub/sub is at-most-once),
- a batch revealed a gap, or its fanout dropped it (a lost target) while the
  connection may still continue exactly.

Every outbox is bounded, in frames and in bytes (``OUTBOX_SIZE``,
``OUTBOX_BYTES``), and the user's outbound stream in Redis is where
events wait, not the gateway: when a batch does not fit, the connection takes
what fits and is *paused* -- detached from its fanout, so nothing more is read
for it -- until its outbox is half empty (in frames and in bytes); then it is attached
again from its cursor. A replay of any length thus flows at the pace the
client reads. A connection that stays paused for ``SLOW_CONSUMER_AFTER``
seconds (default 10) is closed with ``SLOW_CONSUMER`` (4008) and reconnects
with ``last_id``.

*Encryption at rest.* Stored events carry their text sealed (ENCRYPTION_KEYS),
and the fanout forwards what is stored, holding no keys. The hub opens the
text here, where stored events become frames: once per delivery for all the
connections it goes to (:class:`OpenedEvents`), not once per device. An
event no key opens goes out as an ``unreadable`` error in its place --
never its ciphertext -- and the connection's cursor moves past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import cached_property

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from switchboard.shared import cluster, internal, keys
from switchboard.shared.encryption import CannotOpen, Keyring
from switchboard.shared.nodes import Membership
from switchboard.shared.protocol import CloseCode, Error, ErrorCode, Event, Frame, encode
from switchboard.shared.tasks import finish, wait_event

from .cursor import DeliveryEvents
from .delivery import Deliver, DeliveryState, Ignore, Reattach, Resync, resume_room
from .outbox import Outbox

log = logging.getLogger(__name__)

#: Seconds between checks of fanout liveness.
MONITOR_INTERVAL = 1.0


class Connection:
    """One WebSocket connection as the hub sees it: who it is, its outbox and
    its :class:`~.delivery.DeliveryState` (no socket in here)."""

    def __init__(self, conn_id: str, user: str, device: str, epoch: str, last: str,
                 outbox_size: int, close: Callable[[CloseCode, str], None], *,
                 outbox_bytes: int = 8 << 20, slow_consumer_after: float = 10.0,
                 resync_holdoff: float = 0.25):
        self.id = conn_id
        self.user = user
        self.device = device
        self.epoch = epoch
        self.delivery = DeliveryState(last, resync_holdoff)
        self.outbox = Outbox(outbox_size, outbox_bytes)
        #: seconds it may stay paused (its outbox full) before it is closed as slow
        self.slow_consumer_after = slow_consumer_after
        self._close = close
        self.resumer: asyncio.Task | None = None  #: runs while paused (see the module docstring)
        #: ``extra`` of every log line about this connection: the fields the
        #: JSON log format reports (:mod:`switchboard.shared.logs`).
        self.log_context = {"user": user, "device": device, "conn": conn_id}

    @property
    def last(self) -> str:
        """The newest event id put in the outbox."""
        return self.delivery.last

    @property
    def paused(self) -> bool:
        return self.delivery.paused

    @property
    def closed(self) -> bool:
        return self.delivery.closed

    def close(self, code: CloseCode, why: str) -> None:
        """Deliver nothing more, and have the socket closed with ``code``."""
        log.warning("closing connection %s with %d: %s", self.id, code, why, extra=self.log_context)
        self.delivery.closed = True
        self._close(code, why)

    async def reply(self, frame: Frame) -> None:
        """Queue the answer to one of the client's frames, waiting for room."""
        await self.outbox.put(encode(frame))


class OpenedEvents(DeliveryEvents):
    """A delivery's events, each frame made with its text opened (see the
    module notes): an event whose text no key opens becomes an ``unreadable``
    error frame. Like the encoding, this happens on first use only."""

    def __init__(self, events: Sequence[Event], keyring: Keyring):
        super().__init__(events)
        self.keyring = keyring

    @cached_property
    def frames(self) -> list[bytes]:
        frames: list[bytes] = []
        unreadable: list[str] = []
        for event in self.events:
            try:
                text = self.keyring.open(event.text)
            except CannotOpen:
                unreadable.append(event.id)
                frames.append(encode(Error(code=ErrorCode.UNREADABLE, client_msg_id=event.client_msg_id,
                                           message=f"event {event.id} cannot be decrypted with this server's keys")))
                continue
            frames.append(encode(event if text is event.text else msgspec.structs.replace(event, text=text)))
        if unreadable:
            log.error("%d events of a delivery no key of ENCRYPTION_KEYS opens (%s ... %s): sent as "
                      "'unreadable' errors", len(unreadable), unreadable[0], unreadable[-1])
        return frames


class DeliveryHub:
    def __init__(self, redis: aioredis.Redis, gateway_id: str, subscriber: aioredis.Redis | None = None,
                 keyring: Keyring | None = None):
        # ``redis`` must not decode responses: deliveries are msgpack bytes.
        # ``subscriber`` (connection.make_subscriber: no retries) carries the
        # delivery subscription, so that losing it is seen and repaired.
        self.redis = redis
        self.subscriber = subscriber or redis
        self.keyring = keyring or Keyring()  #: opens the events' text (ENCRYPTION_KEYS)
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
        fanout = conn.delivery.start_attach(conn.user, self.live, time.monotonic())
        if fanout is None:
            return
        message = internal.encode(internal.Attach(gateway=self.gateway_id, conn=conn.id,
                                                  user=conn.user, cursor=conn.last))
        try:
            receivers = await self.redis.publish(keys.fanout_control(fanout[0]), message)
            if not receivers and cluster.is_cluster(self.redis):
                # PUBLISH counts only its node's subscribers; every node delivers it.
                [(_, receivers)] = await cluster.numsub(self.redis, [keys.fanout_control(fanout[0])])
        except RedisError as exc:
            log.warning("attach of %s to fanout %s failed: %s", conn.id, fanout[0], exc, extra=conn.log_context)
            conn.delivery.attached(None)
            return
        conn.delivery.attached(fanout if receivers else None)

    async def _detach(self, conn: Connection) -> None:
        fanout = conn.delivery.fanout
        if fanout is None:
            return
        message = internal.encode(internal.Detach(conn=conn.id, user=conn.user))
        try:
            await self.redis.publish(keys.fanout_control(fanout[0]), message)
        except RedisError as exc:
            # The fanout drops attachments of dead gateways and of unknown
            # connections on its own; a lost detach costs only a little work
            # (deliveries to a paused connection are ignored).
            log.debug("detach of %s not sent: %s", conn.id, exc, extra=conn.log_context)

    # -- pausing -----------------------------------------------------------------

    def _pause(self, conn: Connection) -> None:
        log.debug("pausing %s at %s: outbox full", conn.id, conn.last, extra=conn.log_context)
        conn.resumer = asyncio.create_task(self._resume_when_drained(conn), name=f"resume-{conn.id}")
        conn.resumer.add_done_callback(_log_failure)

    async def _resume_when_drained(self, conn: Connection) -> None:
        """Stop reading for a connection until half its outbox is free, then
        attach it again from its cursor (what it was sent up to)."""
        await self._detach(conn)
        box = conn.outbox
        try:
            await asyncio.wait_for(box.wait_room(resume_room(box.size), resume_room(box.max_bytes)),
                                   conn.slow_consumer_after)
        except TimeoutError:
            conn.close(CloseCode.SLOW_CONSUMER,
                       f"outbox full for {conn.slow_consumer_after:g} s; reconnect with last_id")
            return
        conn.resumer = None
        conn.delivery.resumed()
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
            pubsub = self.subscriber.pubsub()
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
        """Carry out, for each connection a delivery is for, what its
        :meth:`~.delivery.DeliveryState.on_batch` decides."""
        try:
            delivery = internal.decode_delivery(data)
        except Exception:  # noqa: BLE001 - a malformed internal message must not stop delivery
            log.exception("undecodable delivery dropped")
            return
        # Parsed, opened and encoded on first use: a delivery for closed connections costs nothing.
        events = OpenedEvents(delivery.events, self.keyring)
        for target in delivery.targets:
            conn = self.conns.get(target.conn)
            if conn is None:
                continue
            try:
                decision = conn.delivery.on_batch(target, events, conn.outbox.fitting, time.monotonic())
            except ValueError:
                log.exception("malformed delivery dropped")
                return
            match decision:
                case Deliver(start=start, count=count, pause=pause):
                    # ``count`` is what was just measured to fit, so all of it is queued.
                    conn.outbox.offer(events.frames[start:start + count])
                    if pause:
                        self._pause(conn)
                case Reattach(why=why):
                    log.info("re-attaching %s: %s", conn.id, why, extra=conn.log_context)
                    await self._attach(conn)
                case Resync(why=why):
                    conn.close(CloseCode.RESYNC, why)
                case Ignore():
                    pass

    async def _monitor(self) -> None:
        while not self.closing.is_set():
            try:
                self.live = await self._read_live()
            except (RedisError, OSError) as exc:
                log.warning("cannot read fanout liveness: %s", exc)
            else:
                for conn in list(self.conns.values()):
                    if conn.delivery.needs_attach(self.live):
                        await self._attach(conn)
            await wait_event(self.closing, MONITOR_INTERVAL)

    async def _read_live(self) -> dict[str, str]:
        """The live fanouts and their incarnations (SMEMBERS, MGET)."""
        return await Membership(self.redis, keys.fanout_members(), keys.fanout_alive).live()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
