"""The fanout service.

State is soft: attachments live in memory (a :class:`~.registry.Registry`,
which decides what each user needs; this module only does the I/O) and are
rebuilt by gateways, which re-attach from their own cursors whenever this
instance's *incarnation* changes (restart, or a lost control subscription).
So a fanout can be killed at any moment without losing or repeating an event.

Loop structure:

- *listen*: one pub/sub connection carries this instance's control channel
  (attach/detach from gateways) and one notify channel per attached user
  (published by every append to the user's outbound stream);
- *pump*: for each user marked dirty (and, for one whose last read its byte
  budget cut, due again: ``FANOUT_REPLAY_PACE``), read the outbound stream after the
  smallest cursor and publish one batch per connection (:mod:`.plan`). A
  notice carries its event and the id before it, so when the notices since
  the last delivery continue the smallest cursor without a hole, they are
  delivered as they are, without reading the stream (the live path);
- *sweep*: refresh the liveness key, mark every user dirty (so a lost notify
  costs at most one sweep interval), and drop attachments of gateways that no
  longer listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from switchboard.shared import connection as redisconn
from switchboard.shared import cluster, health, internal, keys, outbound, streamids
from switchboard.shared.nodes import Membership, NodeRegistry
from switchboard.shared.metrics import FanoutMetrics
from switchboard.shared.protocol import Event
from switchboard.shared.settings import FanoutSettings
from switchboard.shared.tasks import finish, wait_event

from . import read
from .plan import RoundBudget, event_bytes
from .registry import GatewayWatch, Registry, Round

log = logging.getLogger(__name__)

#: Users read per round trip by the pump.
USERS_PER_ROUND = 256


class Fanout:
    def __init__(self, settings: FanoutSettings):
        self.settings = settings
        self.id = settings.server_id
        self.incarnation = secrets.token_hex(6)
        self.metrics = FanoutMetrics(max_commands=settings.health.metrics_max_commands)
        self.redis = redisconn.make_client(settings.redis, metrics=self.metrics.redis)
        self.raw = redisconn.make_client(settings.redis, decode=False, metrics=self.metrics.redis)
        self.subscriber = redisconn.make_subscriber(settings.redis)  # a lost subscription must be seen
        #: Where deliveries are published (a cluster pipeline takes no PUBLISH).
        self.publisher = redisconn.make_publisher(settings.redis) or self.raw
        self.reader = read.OutboundReader(self.raw)
        self.registry = Registry(settings.batch, settings.batch_bytes, settings.replay_pace)
        #: users read vs delivered from notices, and deliveries put off to the
        #: next round by the per-gateway byte budget (tests, metrics)
        self.counts = {"reads": 0, "direct": 0, "deferred": 0}
        self.metrics.count_users(self.counts)
        self.metrics.users.set_function(lambda: len(self.registry))
        self.metrics.attachments.set_function(self.registry.attachment_count)
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        self._pubsub: aioredis.client.PubSub | None = None
        self.gateways = GatewayWatch()
        self.stopping = asyncio.Event()
        #: The announcement gateways read: this instance's incarnation, renewed every sweep.
        self.membership = Membership(self.redis, keys.fanout_members(), keys.fanout_alive)
        #: The operators' registry (``switchboard nodes``).
        self.node = NodeRegistry(self.redis, settings.nodes, "fanout", self.id, self._node_details)
        # The health checks' own small client, apart from the pump's.
        self.health_redis = redisconn.make_client(settings.redis, max_connections=2)
        self.health = self._health()

    def _health(self) -> health.Health:
        """Ready = subscribed to its control channel, not stopping, Redis
        answering (docs/operations.md, "Health")."""
        checks = health.Health(self.settings.health, "fanout")

        def state() -> str | None:
            if self.stopping.is_set():
                return "shutting down"
            if self._pubsub is None:
                return "not subscribed to its control channel"
            return None

        checks.add_condition(state)
        checks.add_probe("redis", lambda: health.redis_ping(self.health_redis))
        checks.metrics = self.metrics.exposition
        return checks

    def _node_details(self) -> dict[str, int | str]:
        return {"users": len(self.registry), "attachments": self.registry.attachment_count(),
                "incarnation": self.incarnation}

    # -- lifecycle ---------------------------------------------------------------

    async def serve(self, *, stop: asyncio.Event | None = None) -> None:
        self.stopping = stop or asyncio.Event()
        try:
            async with self.health.running():
                await self._serve()
        finally:
            await self.health_redis.aclose()

    async def _serve(self) -> None:
        tasks = [asyncio.create_task(self._listen(), name="fanout-listen"),
                 asyncio.create_task(self._pump(), name="fanout-pump"),
                 asyncio.create_task(self._sweep(), name="fanout-sweep"),
                 asyncio.create_task(self.node.run(self.stopping), name="fanout-node")]
        stopped = asyncio.create_task(self.stopping.wait(), name="fanout-stop")
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()
        finally:
            self.stopping.set()
            self.wake.set()
            await finish([stopped, *tasks], grace=2.0)
            with contextlib.suppress(RedisError, OSError):
                # Leave at once, so gateways move their connections now rather
                # than when the liveness key expires.
                await self.membership.leave(self.id)
            await self.redis.aclose()
            await self.raw.aclose()
            if self.publisher is not self.raw:
                await self.publisher.aclose()
            await self.subscriber.aclose()
            log.info("fanout %s stopped", self.id)

    async def _announce(self) -> None:
        await self.membership.announce(self.id, self.incarnation, self.settings.alive_ttl)

    # -- listen: control + notify --------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.1
        first = True
        while not self.stopping.is_set():
            pubsub = self.subscriber.pubsub()
            try:
                await pubsub.subscribe(keys.fanout_control(self.id))
                if not first:
                    # Attach requests may have been missed: a new incarnation
                    # makes every gateway re-attach its connections.
                    self.incarnation = secrets.token_hex(6)
                    self.registry.clear()
                await self._announce()
                first = False
                self._pubsub = pubsub
                self.ready.set()
                log.info("fanout %s live (incarnation %s)", self.id, self.incarnation)
                backoff = 0.1
                while not self.stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message["type"] == "message":
                        await self._on_message(message["channel"].decode(), message["data"])
            except (RedisError, OSError) as exc:
                log.warning("fanout subscription lost: %s", exc)
                self._pubsub = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _on_message(self, channel: str, data: bytes) -> None:
        if channel == keys.fanout_control(self.id):
            try:
                message = internal.decode_control(data)
            except Exception:  # noqa: BLE001 - never let one bad message stop the tier
                log.exception("undecodable control message dropped")
                return
            if isinstance(message, internal.Attach):
                await self._attach(message)
            else:
                await self._detach(message.user, message.conn)
            return
        # A notify channel: sb:{u:<user>}:notify
        user = _user_of_channel(channel)
        if user is None or user not in self.registry:
            return
        if self.registry.on_notice(user, outbound.parse_notice(data), len(data)):
            self.wake.set()

    async def _attach(self, message: internal.Attach) -> None:
        if message.user not in self.registry:
            assert self._pubsub is not None
            # Subscribe before reading, so no append after the read is missed.
            await self._pubsub.subscribe(keys.notify(message.user))
        self.registry.attach(message.gateway, message.conn, message.user, message.cursor)
        self.wake.set()

    async def _detach(self, user: str, conn: str) -> None:
        if self.registry.detach(user, conn):
            await self._unsubscribe(user)

    async def _unsubscribe(self, user: str) -> None:
        if self._pubsub is not None:
            await self._pubsub.unsubscribe(keys.notify(user))

    # -- pump ----------------------------------------------------------------------

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            delay = self.registry.next_due(loop.time())  # None: nobody dirty
            if delay is None or delay > 0:
                # Nothing due: wait for news, or for a paced replay's next read.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)
                self.wake.clear()
                continue
            round_ = self.registry.take_round(USERS_PER_ROUND, loop.time())
            try:
                await self._deliver(round_)
            except (RedisError, OSError) as exc:
                log.warning("fanout read failed: %s; retrying", exc)
                self.registry.retry(round_)
                await asyncio.sleep(0.2)

    async def _deliver(self, round_: Round) -> None:
        """Read what the round needs read, and publish what each user's
        connections get, one message per gateway, in one round trip.

        Bytes are bounded at every step: each read (``FANOUT_BATCH_BYTES``,
        after at least one event), hence each message, and what one round
        publishes to one gateway (``FANOUT_ROUND_BYTES``, :class:`~.plan.RoundBudget`)."""
        # No hole after ``start`` in notices, so no attachment can have lost events to trimming.
        ready: list[tuple[str, str, list[Event], str, bool]] = [  # user, start, events, trimmed, more
            (d.user, d.start, d.events, streamids.ZERO, False) for d in round_.direct]
        if round_.reads:
            results = await self.reader.read([(r.user, r.start) for r in round_.reads],
                                             self.settings.batch, self.settings.batch_bytes)
            for r, raw in zip(round_.reads, results):
                reply = read.parse(raw)
                ready.append((r.user, r.start, reply.events, reply.trimmed, reply.cut))
        self.metrics.rounds.inc()
        self.counts["reads"] += len(round_.reads)
        self.counts["direct"] += len(round_.direct)
        budget = RoundBudget(self.settings.round_bytes)
        now = asyncio.get_running_loop().time()
        publish = self.publisher.pipeline(transaction=False)
        sent: list[str] = []
        batch_events = 0
        for user, start, events, trimmed, more in ready:
            if events and not budget.admit(self.registry.gateways_of(user), sum(map(event_bytes, events))):
                self.registry.defer(user)
                self.counts["deferred"] += 1
                continue
            # One message per gateway carries the events once for all of the
            # user's connections there.
            for group in self.registry.cut(user, start, events, trimmed, more=more, now=now):
                targets = [internal.Target(conn=b.attachment.conn, prev=b.prev, lost=b.lost) for b in group.targets]
                delivery = internal.Delivery(targets=targets, events=group.events)
                publish.publish(keys.gateway_delivery(group.gateway), internal.encode(delivery))
                sent.append(group.gateway)
                batch_events += len(group.events)
        if sent:
            receivers = await publish.execute()
            self.metrics.batches.inc(len(sent))
            self.metrics.events.inc(batch_events)
            for gateway, count in zip(sent, receivers):
                if count:
                    self.gateways.heard(gateway)

    # -- sweep -----------------------------------------------------------------------

    async def _sweep(self) -> None:
        await self.ready.wait()
        while not await wait_event(self.stopping, self.settings.sweep_interval):
            try:
                await self._announce()
                await self._drop_dead_gateways()
                await self._forget_dead_fanouts()
            except (RedisError, OSError) as exc:
                log.warning("fanout sweep failed: %s", exc)
                continue
            if self.registry.mark_all():
                self.wake.set()

    async def _drop_dead_gateways(self) -> None:
        gateways = self.registry.gateways()
        if not gateways:
            return
        counts = await cluster.numsub(self.redis, [keys.gateway_delivery(g) for g in gateways])
        for gateway, (_, subscribers) in zip(gateways, counts):
            if subscribers:
                self.gateways.heard(gateway)
            elif self.gateways.silent(gateway):
                # A gateway that comes back re-attaches everything on its own.
                log.info("gateway %s no longer listens; dropping its attachments", gateway)
                for user in self.registry.drop_gateway(gateway):
                    await self._unsubscribe(user)


    async def _forget_dead_fanouts(self) -> None:
        """Remove members whose liveness key has expired (killed, never
        stopped): else the set grows with every fanout pod that ever died and
        every gateway reads it all each check. A member that was only late
        to renew announces itself again at its next sweep (SET, then SADD)."""
        dead = await self.membership.forget_expired()
        if dead:
            log.info("forgetting fanouts that stopped renewing: %s", ", ".join(dead))


def _user_of_channel(channel: str) -> str | None:
    head = f"{keys.PREFIX}:{{u:"
    if channel.startswith(head) and channel.endswith("}:notify"):
        return channel[len(head):-len("}:notify")]
    return None
