"""The worker loop: read work notices, run conversations, acknowledge.

Work notices ``(user, conversation)`` -- "this conversation has work" -- arrive on the work stream(s)
through the consumer group ``workers``. The loop is arq-shaped:

1. *poll*: ``XREADGROUP`` while fewer than ``WORKER_CONCURRENCY +
   WORKER_READ_AHEAD`` conversations are taken;
2. *start*: a notice joins the task of its conversation, or starts one;
3. *run*: the task drains the conversation under its lease (:mod:`.turns`),
   a turn at a time in one of ``WORKER_CONCURRENCY`` slots that users share
   fairly (:mod:`.slots`): the read-ahead is what lets a new user's notice
   be read, and served next, while another user's backlog fills the slots;
4. *finish*: the notices it has covered are queued for acknowledgement; one
   *acker* acknowledges and deletes everything queued (``XACK`` + ``XDEL`` in
   one ``MULTI``), so under load one round trip covers many turns. A notice
   not yet acknowledged when the worker dies is claimed and finds its turn
   done: nothing runs twice.

A worker killed at any instant leaves its notices pending; the *claimer* of
every other worker takes notices idle for ``CLAIM_IDLE`` seconds
(``XAUTOCLAIM``), and the lease expires after ``LEASE_TTL``, so another worker
finishes the turn. Notices of conversations taken are kept fresh (one
``XCLAIM`` to ourselves per stream for all of them), so a slow turn, or a
conversation waiting for a slot, is not taken over while its worker is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from redis.exceptions import RedisError, ResponseError

from switchboard.shared import connection as redisconn
from switchboard.shared import health, keys
from switchboard.shared.checkpoints import setup_saver
from switchboard.shared.fields import WorkField
from switchboard.shared.metrics import WorkerMetrics
from switchboard.shared.nodes import NodeRegistry
from switchboard.shared.settings import WorkerSettings
from switchboard.shared.tasks import finish, wait_event

from . import loader
from .fencing import FencedRedisSaver
from .lease import LeaseLostError
from .slots import FairSlots, SlotsClosed
from .turns import Turns

log = logging.getLogger(__name__)

#: One work notice as the worker tracks it: (work stream, notice id); ids
#: are unique per stream only. (Not the outbound stream's pub/sub notice.)
WorkItem = tuple[str, str]

#: Notices acknowledged per round trip at most.
ACK_BATCH = 1000


def _by_stream(notices: list[WorkItem]) -> dict[str, list[str]]:
    """Notice ids grouped by their work stream (one command per stream)."""
    grouped: dict[str, list[str]] = {}
    for stream, notice_id in notices:
        grouped.setdefault(stream, []).append(notice_id)
    return grouped


@dataclass
class ConversationTask:
    user: str
    conversation: str
    notices: list[WorkItem] = field(default_factory=list)
    task: asyncio.Task | None = None

    @property
    def log_context(self) -> dict[str, str]:
        """The fields of this conversation's log lines (JSON logs)."""
        return {"user": self.user, "conversation": self.conversation}


class Worker:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.consumer = settings.server_id
        # Conversations + claimer + reader each may hold a connection at once.
        self.metrics = WorkerMetrics(work_shards=settings.streams.work_shards,
                                     max_commands=settings.health.metrics_max_commands)
        self.redis = redisconn.make_client(settings.redis, max_connections=settings.concurrency + 8,
                                           metrics=self.metrics.redis)
        self.raw = redisconn.make_client(settings.redis, max_connections=settings.concurrency + 8, decode=False,
                                         metrics=self.metrics.redis)
        self.streams = [keys.work(i) for i in range(settings.streams.work_shards)]
        self.running: dict[tuple[str, str], ConversationTask] = {}  #: conversations taken
        self.slots = FairSlots(settings.concurrency)
        self.slot_freed = asyncio.Event()  #: a conversation taken has finished
        self._reserved = 0  #: room held by blocked reads (one reader per work stream on a cluster)
        self.turns: Turns | None = None
        self.ready = asyncio.Event()
        self._acks: list[WorkItem] = []  # bounded by what the running conversations covered
        #: Conversations that stopped with work left because the worker is
        #: stopping (bounded by the conversations taken: WORKER_READ_AHEAD).
        self._stopped: list[ConversationTask] = []
        self._ack_wanted = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._reader: asyncio.Task | None = None
        # The health checks' own small client: a pool busy with turns must not read as Redis down.
        self.health_redis = redisconn.make_client(settings.redis, max_connections=2)
        self.health = self._health()
        self.metrics.leases.set_function(lambda: len(self.turns.tokens.active) if self.turns is not None else 0)
        self.metrics.taken.set_function(lambda: len(self.running))
        self.metrics.slots_busy.set_function(lambda: self.slots.busy)
        #: This worker in the node registry (``switchboard nodes``): its record
        #: expires NODE_TTL after a kill -9, long before CLAIM_IDLE hands its work on.
        self.node = NodeRegistry(self.redis, settings.nodes, "worker", self.consumer, lambda: {
            "running": self.slots.busy, "slots": self.settings.concurrency, "taken": len(self.running)})

    def _health(self) -> health.Health:
        """Ready = set up, reading work, not stopping, Redis answering and the
        group present on every work stream (docs/operations.md, "Health")."""
        checks = health.Health(self.settings.health, "worker")

        def state() -> str | None:
            if self._stop is not None and self._stop.is_set():
                return "shutting down: finishing running turns"
            if not self.ready.is_set():
                return "starting: loading the graph"
            if self._reader is not None and self._reader.done():
                return "the work read loop has ended"
            return None

        checks.add_condition(state)
        checks.add_probe("redis", self._check_groups)
        checks.metrics = self.metrics.exposition
        return checks

    async def _check_groups(self) -> str | None:
        """One round trip (on a Redis Cluster, one per node): XLEN of the
        dead letters (a gauge; it failing = Redis unreachable) and XINFO
        GROUPS of every work stream (which also sets the backlog gauges)."""
        pipe = self.health_redis.pipeline(transaction=False)
        pipe.xlen(keys.dead_letters())
        for stream in self.streams:
            pipe.xinfo_groups(stream)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError):
            return "redis: unreachable"
        if isinstance(replies[0], Exception):
            return "redis: unreachable"
        dead_letters, replies = replies[0], replies[1:]
        self.metrics.backlog(replies, keys.WORKER_GROUP, dead_letters)
        missing = [stream for stream, groups in zip(self.streams, replies)
                   if isinstance(groups, Exception) or not any(g.get("name") == keys.WORKER_GROUP for g in groups)]
        if missing:
            return f"consumer group {keys.WORKER_GROUP!r} missing on {', '.join(missing)}"
        return None

    async def serve(self, *, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self._stop = stop
        try:
            async with self.health.running():
                await self._serve(stop)
        finally:
            await self.health_redis.aclose()

    async def _serve(self, stop: asyncio.Event) -> None:
        ttl = {"default_ttl": self.settings.checkpoint_ttl, "refresh_on_read": True} if self.settings.checkpoint_ttl else None
        saver = FencedRedisSaver(redis_client=self.raw, ttl=ttl, cache_size=self.settings.checkpoint_cache,
                                 keyring=self.settings.encryption)
        await setup_saver(saver)
        graphs = loader.load_all(self.settings.graph, saver)
        self.turns = Turns(self.redis, graphs, self.settings, self.slots, metrics=self.metrics)
        for stream in self.streams:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await self.redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        log.info("worker %s ready: graph=%s (%s) concurrency=%d encryption at rest: %s", self.consumer,
                 self.settings.graph, ", ".join(f"{n} (default)" if n == graphs.default else n for n in graphs.by_name),
                 self.settings.concurrency,
                 repr(self.settings.encryption) if self.settings.encryption.enabled else "off")
        self.ready.set()
        reader = self._reader = asyncio.create_task(self._read_loop(stop), name="worker-read")
        claimer = asyncio.create_task(self._claim_loop(stop), name="worker-claim")
        acks_done = asyncio.Event()
        acker = asyncio.create_task(self._ack_loop(acks_done), name="worker-ack")
        refresher = asyncio.create_task(self._refresh_loop(acks_done), name="worker-refresh")
        node = asyncio.create_task(self.node.run(stop), name="worker-node")
        cancels = asyncio.create_task(self._cancel_loop(stop), name="worker-cancels")
        try:
            await stop.wait()
        finally:
            stop.set()
            self.slots.close()  # no turn starts from here on (see _finish_running)
            deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace
            # The loops notice `stop` within one blocking read; what that read
            # returned is started, and so covered by _finish_running.
            await finish([reader, claimer, node], grace=self.settings.read_block + 1.0)
            await self._finish_running(max(0.0, deadline - asyncio.get_running_loop().time()))
            await finish([cancels], grace=1.0)
            acks_done.set()  # the acker sends what is queued, then ends
            self._ack_wanted.set()
            await finish([acker, refresher], grace=5.0)
            await self.redis.aclose()
            await self.raw.aclose()

    async def _cancel_loop(self, stop: asyncio.Event) -> None:
        """Stop the graph runs the gateways' cancel notices name (``keys.cancels``).

        Pub/sub is at most once: a notice lost while the subscription is down
        only means the turn runs on, and its commit writes it as
        ``cancelled`` all the same (the conversation's ``cancel`` mark)."""
        subscriber = redisconn.make_subscriber(self.settings.redis, decode=True)
        backoff = 0.1
        try:
            while not stop.is_set():
                pubsub = subscriber.pubsub()
                try:
                    await pubsub.subscribe(keys.cancels())
                    backoff = 0.1
                    while not stop.is_set():
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                        if message is None or message["type"] != "message" or self.turns is None:
                            continue
                        parts = str(message["data"]).split(" ")
                        if len(parts) == 3 and self.turns.cancel(*parts):
                            log.info("stopping the turn of %s/%s (cancelled up to %s)", *parts,
                                     extra={"user": parts[0], "conversation": parts[1]})
                except (RedisError, OSError) as exc:
                    log.warning("cancel subscription lost: %s", exc)
                    await wait_event(stop, backoff)
                    backoff = min(backoff * 2, 2.0)
                finally:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
        finally:
            await subscriber.aclose()

    async def _finish_running(self, grace: float) -> None:
        """Let running turns finish within the grace period; hand the rest back.

        No turn starts after this: the slots are closed, so conversations
        taken ahead (waiting for a slot) and drains between two turns stop at
        once, and a running turn is the last of its drain. Handing back = the
        lease is released (on the drain's way out; a turn still running at
        the end of the grace period is cancelled), the conversation's notices
        are re-added to the work stream and the old ones acknowledged, so
        another worker starts at once instead of after CLAIM_IDLE.
        """
        self.slots.close()
        running = [c for c in self.running.values() if c.task is not None]
        if running:
            log.info("waiting up to %.1f s for %d running conversations", grace, len(running))
            await asyncio.wait([c.task for c in running], timeout=grace)
        unfinished = [c for c in running if not c.task.done()]
        for conv in unfinished:
            conv.task.cancel()
        if unfinished:
            await asyncio.wait([c.task for c in unfinished], timeout=5)
        left = self._stopped + [c for c in unfinished if c not in self._stopped]
        for conv in left:
            await self._hand_back(conv)
        if left:
            log.info("handed back %d conversations (%d cut short)", len(left), len(unfinished))

    async def _hand_back(self, conv: ConversationTask) -> None:
        if not conv.notices:
            return
        # One transaction (a notice is re-added only with the old one's
        # acknowledgement); on a Redis Cluster, one per work stream.
        batches = ([conv.notices] if not self.settings.redis.cluster
                   else [[(stream, i) for i in ids] for stream, ids in _by_stream(conv.notices).items()])
        try:
            for batch in batches:
                pipe = self.redis.pipeline(transaction=True)
                for stream, notice_id in batch:
                    pipe.xadd(stream, {WorkField.USER: conv.user, WorkField.CONV: conv.conversation})
                    pipe.xack(stream, keys.WORKER_GROUP, notice_id)
                    pipe.xdel(stream, notice_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # Still pending on this consumer: claimed after CLAIM_IDLE instead.
            log.warning("hand-back of %s/%s failed: %s", conv.user, conv.conversation, exc, extra=conv.log_context)

    # -- poll + start ----------------------------------------------------------------

    async def _read_loop(self, stop: asyncio.Event) -> None:
        """Read work notices into conversations started, as slots allow.

        One blocking ``XREADGROUP`` covers every work stream -- except on a
        Redis Cluster, where each stream is in its own slot and a read may
        name one slot only: there each stream has its own reader, and they
        share the room left (:meth:`_read_streams`)."""
        if not self.settings.redis.cluster or len(self.streams) == 1:
            await self._read_streams(stop, self.streams, readers=1)
            return
        readers = [asyncio.create_task(self._read_streams(stop, [stream], readers=len(self.streams)),
                                       name=f"worker-read-{stream}") for stream in self.streams]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a reader that failed ends the loop (the health check then says so)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read_streams(self, stop: asyncio.Event, streams: list[str], *, readers: int) -> None:
        """One reader's loop over ``streams``. Each read asks for at most its
        share of the room left (``readers`` share it), reserved while the read
        blocks so that together they never take more than the room."""
        block_ms = int(self.settings.read_block * 1000)
        while not stop.is_set():
            free = self._room() - self._reserved
            if free <= 0:
                self.slot_freed.clear()
                await wait_event(self.slot_freed, self.settings.read_block)
                continue
            count = -(-free // readers)
            self._reserved += count
            try:
                reply = await self.redis.xreadgroup(
                    keys.WORKER_GROUP, self.consumer, {s: ">" for s in streams}, count=count, block=block_ms)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (e.g. Redis data loss)
                    for stream in streams:
                        with contextlib.suppress(ResponseError):
                            await self.redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
                    continue
                raise
            except (RedisError, OSError) as exc:
                # A reply lost here leaves notices pending on this consumer: the
                # claimer of some worker (this one too) picks them up.
                log.warning("work read failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            finally:
                self._reserved -= count
                if readers > 1:
                    self.slot_freed.set()  # the room this read held is free again for the other readers
            for stream, entries in reply or []:
                for notice_id, fields in entries:
                    self._start((stream, notice_id), fields)
            # Let the conversations just started send their first command
            # before this loop sends its next blocking read.
            await asyncio.sleep(0)

    def _room(self) -> int:
        """Conversations this worker may still take."""
        return self.settings.concurrency + self.settings.read_ahead - len(self.running)

    def _start(self, notice: WorkItem, fields: dict[str, str] | None) -> None:
        if not fields or WorkField.USER not in fields or WorkField.CONV not in fields:
            # A deleted or malformed notice: nothing to run; acknowledge it.
            self._queue_ack([notice])
            return
        key = (fields[WorkField.USER], fields[WorkField.CONV])
        running = self.running.get(key)
        if running is not None:
            running.notices.append(notice)
            return
        running = ConversationTask(key[0], key[1], [notice])
        self.running[key] = running
        running.task = asyncio.create_task(self._run(running), name=f"conv-{key[0]}/{key[1]}")

    # -- run + finish -----------------------------------------------------------------

    async def _run(self, conv: ConversationTask) -> None:
        assert self.turns is not None
        backoff = 0.1
        try:
            while conv.notices:
                covered = list(conv.notices)
                try:
                    finished = await self.turns.drain(conv.user, conv.conversation)
                except SlotsClosed:
                    self._stopped.append(conv)  # its notices are handed back (_finish_running)
                    return
                except LeaseLostError as exc:
                    # We stalled and another worker took over; it owns the turn now.
                    log.warning("%s; leaving the conversation to its new owner", exc, extra=conv.log_context)
                    return
                except (RedisError, OSError) as exc:
                    log.warning("conversation %s/%s: storage error %s; retrying", conv.user, conv.conversation, exc,
                                extra=conv.log_context)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if not finished:
                    # Another worker held the lease past our wait. It may have
                    # looked before our entry arrived, so keep the notices and
                    # try again rather than acknowledge work nobody did.
                    log.info("conversation %s/%s busy elsewhere; waiting", conv.user, conv.conversation,
                             extra=conv.log_context)
                    continue
                self._queue_ack(covered)
                conv.notices = [n for n in conv.notices if n not in covered]
        except Exception:
            log.exception("conversation %s/%s crashed; its notices stay pending", conv.user, conv.conversation,
                          extra=conv.log_context)
        finally:
            self.running.pop((conv.user, conv.conversation), None)
            self.slot_freed.set()

    async def _refresh_loop(self, stop: asyncio.Event) -> None:
        """Reset the idle time of every notice of the conversations taken
        (running or waiting for a slot), so no other worker claims them."""
        interval = max(self.settings.claim_idle / 3, 0.2)
        while not await wait_event(stop, interval):
            held = [notice for conv in list(self.running.values()) for notice in conv.notices]
            for stream, ids in _by_stream(held).items():
                for start in range(0, len(ids), ACK_BATCH):
                    with contextlib.suppress(RedisError, OSError):
                        await self.redis.xclaim(stream, keys.WORKER_GROUP, self.consumer, 0,
                                                ids[start:start + ACK_BATCH], justid=True)

    async def _ack(self, notices: list[WorkItem]) -> None:
        by_stream = _by_stream(notices)
        for attempt in range(5):
            try:
                # One transaction; on a Redis Cluster, whose transactions
                # stay in one slot, XACK then XDEL per stream, in one round trip.
                pipe = self.redis.pipeline(transaction=not self.settings.redis.cluster or len(by_stream) == 1)
                for stream, ids in by_stream.items():
                    pipe.xack(stream, keys.WORKER_GROUP, *ids)
                    pipe.xdel(stream, *ids)
                await pipe.execute()
                return
            except (RedisError, OSError) as exc:
                log.warning("ack failed (%s), attempt %d", exc, attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))
        # Left pending: a claimer re-runs the drain, which finds nothing to do.

    def _queue_ack(self, notices: list[WorkItem]) -> None:
        self._acks.extend(notices)
        self._ack_wanted.set()

    async def _ack_loop(self, done: asyncio.Event) -> None:
        """Acknowledge queued notices, many per round trip; after ``done`` is
        set, send what is left and end."""
        while True:
            if not self._acks:
                if done.is_set():
                    return
                self._ack_wanted.clear()
                await self._ack_wanted.wait()  # set by _queue_ack, and with `done`
                continue
            batch, self._acks = self._acks[:ACK_BATCH], self._acks[ACK_BATCH:]
            await self._ack(batch)

    # -- claim ----------------------------------------------------------------------------

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        idle_ms = int(self.settings.claim_idle * 1000)
        interval = max(self.settings.claim_idle / 2, 0.2)
        while not await wait_event(stop, interval):
            for stream in self.streams:
                free = self._room()
                if free <= 0:
                    break
                try:
                    _, claimed, deleted = await self.redis.xautoclaim(
                        stream, keys.WORKER_GROUP, self.consumer, idle_ms, start_id="0-0", count=free)
                except (RedisError, OSError) as exc:
                    log.warning("claim failed: %s", exc)
                    continue
                for notice_id, fields in claimed:
                    log.info("claimed notice %s %s from a stalled worker", stream, notice_id)
                    self._start((stream, notice_id), fields)
                if deleted:
                    self._queue_ack([(stream, d) for d in deleted])
