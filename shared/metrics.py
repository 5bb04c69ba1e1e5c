"""Prometheus metrics of every tier, defined once, one registry per process.

Each service builds one of :class:`GatewayMetrics`, :class:`WorkerMetrics`,
:class:`FanoutMetrics` at start (its own ``CollectorRegistry``, never the
library's global one, so a test can build several) and serves it on
``/metrics`` through its health server (:meth:`Metrics.exposition`).

*Names.* ``switchboard_<tier>_<what>`` for what one tier measures
(``switchboard_gateway_frames_received_total``), ``switchboard_redis_...``
for the Redis client every tier has; the scrape's own labels (the chart's
ServiceMonitor adds the pod's ``app.kubernetes.io/component``) tell the tiers
of the Redis metrics apart. Prometheus conventions: base units in the name
(``_seconds``, ``_bytes``), ``_total`` on counters, ``process_*`` for the
process collector of the client library.

*Labels* take bounded values only: frame types, error and close codes,
outcomes, shard numbers, script and command names -- never a user,
conversation, device, connection or message id, never error text. A value
outside a known set becomes ``other`` (a client chooses its close code; a
library may send a command nobody listed).

*Cost.* Hot paths use children bound at construction (``.labels()`` once,
not per event): an increment is a fraction of a microsecond, an
observation one or two. Whatever needs I/O or a walk over state (backlog per
work shard, dead letters, leases, attached users) is read on a slow timer
(the readiness check the tier already runs every ``HEALTH_REFRESH``) or at
scrape (``Gauge.set_function``, :class:`_Callback`), never per turn.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector,
    disable_created_metrics, generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from redis.exceptions import (
    BusyLoadingError, NoScriptError, RedisError, ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import protocol as p
from . import scripts
from .cluster import RetryingRedisCluster

#: Every metric name starts with this.
PREFIX = "switchboard"
#: The value of a label outside its known set.
OTHER = "other"

# -- buckets (seconds), each for what it measures ------------------------------------------

#: One Redis round trip on a local network: 100 µs .. 1 s.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: A turn, or the graph's part of it: 5 ms (a graph without a model) .. 2 min (TURN_TIMEOUT is 60 s).
TURN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: A message waiting for its turn: 1 ms .. 5 min (a backlog).
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: To a reply's first token: 10 ms .. 1 min (models take a while to start).
FIRST_DELTA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Commit to socket write (stream ids have millisecond resolution): 1 ms .. 10 s.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Distinct ``command`` label values a process records by default (scripts
#: and Redis commands; ``METRICS_MAX_COMMANDS``); commands beyond count as
#: ``other``. The code sends a few dozen; the bound keeps the series finite
#: whatever a library sends.
MAX_COMMAND_LABELS = 100

#: Commands that block on the server (their time is how long they waited
#: for data, not a round trip): counted when they fail, not timed.
BLOCKING_COMMANDS = frozenset({"XREAD", "XREADGROUP", "BLPOP", "BRPOP", "BLMOVE", "BLMPOP", "BRPOPLPUSH",
                               "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF"})


def _name(tier: str | None, what: str) -> str:
    return f"{PREFIX}_{tier}_{what}" if tier else f"{PREFIX}_{what}"


class _Callback:
    """A collector of values read at scrape from functions: counters kept
    as plain integers elsewhere (``Fanout.counts``), gauges with labels."""

    def __init__(self, family: Callable[[], Metric]):
        self._family = family

    def collect(self) -> Iterable[Metric]:
        yield self._family()

    def describe(self) -> Iterable[Metric]:
        yield self._family()


def callback_counter(name: str, documentation: str, value: Callable[[], float]) -> _Callback:
    def family() -> Metric:
        # CounterMetricFamily adds ``_total`` to the sample; the family's name is without it.
        return CounterMetricFamily(name.removesuffix("_total"), documentation, value=value())
    return _Callback(family)


class Metrics:
    """One process's registry, its Redis client metrics and the exposition."""

    tier = ""

    def __init__(self, registry: CollectorRegistry | None = None, *, max_commands: int = MAX_COMMAND_LABELS):
        # No ``*_created`` series (the text format makes each a gauge of its
        # own, doubling the series for nothing Prometheus uses); a switch of
        # the library, for the whole process, which is the service's.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.redis = RedisMetrics(self.registry, max_commands=max_commands)

    def exposition(self) -> tuple[bytes, str]:
        """``/metrics``: the Prometheus text format (0.0.4, which every
        Prometheus reads) and its content type; the health server's hook."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def counter(self, what: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        if not what.endswith("_total"):
            raise ValueError(f"a counter's name ends with _total: {what!r}")
        return Counter(_name(self.tier, what), documentation, labels, registry=self.registry)

    def gauge(self, what: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        if what.endswith("_total"):
            raise ValueError(f"only a counter's name ends with _total: {what!r}")
        return Gauge(_name(self.tier, what), documentation, labels, registry=self.registry)

    def histogram(self, what: str, documentation: str, buckets: Sequence[float]) -> Histogram:
        if not what.endswith(("_seconds", "_bytes")):
            raise ValueError(f"a histogram's name ends with its base unit (_seconds, _bytes): {what!r}")
        return Histogram(_name(self.tier, what), documentation, buckets=buckets, registry=self.registry)


def _children(metric: Counter | Gauge, values: Iterable[str]) -> dict[str, Any]:
    """Children bound once, by label value (one label)."""
    return {value: metric.labels(value) for value in values}


# -- Redis, every tier ---------------------------------------------------------------------------


def error_kind(exc: BaseException) -> str:
    """A failed Redis command's kind, from its exception class (bounded)."""
    if isinstance(exc, BusyLoadingError):  # a ConnectionError: first
        return "loading"
    if isinstance(exc, RedisConnectionError):
        return "connection"
    if isinstance(exc, (RedisTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, NoScriptError):  # a ResponseError: first
        return "noscript"
    if isinstance(exc, ResponseError):
        return "response"
    return "client" if isinstance(exc, RedisError) else OTHER


ERROR_KINDS = ("loading", "connection", "timeout", "noscript", "response", "client", OTHER)


def script_names() -> dict[str, str]:
    """Every script's SHA1 (what ``EVALSHA`` sends, as redis-py computes it)
    -> its name (:func:`switchboard.shared.scripts.names`)."""
    return {hashlib.sha1(scripts.source(name).encode()).hexdigest(): name for name in scripts.names()}


class RedisMetrics:
    """Round-trip time and errors of every command a client sends, at one
    place: :meth:`client` wraps ``execute_command`` and pipelines' ``execute``.

    Labels: ``command`` is the script's name for ``EVALSHA`` (``accept``,
    ``commit``...), else the Redis command (``XADD``); a pipeline is one
    round trip, labelled with its first script, else its first command. The
    time is what the caller waits: a free pooled connection, the round trip,
    redis-py's retries on a connection error. Blocking reads (:data:`BLOCKING_COMMANDS`) are not
    timed."""

    def __init__(self, registry: CollectorRegistry, *, max_commands: int = MAX_COMMAND_LABELS):
        self.max_commands = max_commands
        self.duration = Histogram(_name(None, "redis_command_duration_seconds"),
                                  "Redis round trips as the caller waits for them, by script or command",
                                  ["command"], buckets=REDIS_BUCKETS, registry=registry)
        self.errors = Counter(_name(None, "redis_errors_total"),
                              "Redis commands that raised, by script or command and kind", ["command", "kind"],
                              registry=registry)
        self._scripts = script_names()
        self._timers: dict[str, Any] = {}
        self._labels: set[str] = set()

    def label(self, args: Sequence[Any]) -> str:
        """The ``command`` label of a command's arguments (bounded)."""
        name = args[0]
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        label = self._scripts.get(args[1], "EVALSHA") if name == "EVALSHA" and len(args) > 1 else str(name).upper()
        if label in self._labels:
            return label
        if len(self._labels) >= self.max_commands:
            return OTHER
        self._labels.add(label)
        return label

    def observe(self, label: str, seconds: float) -> None:
        timer = self._timers.get(label)
        if timer is None:
            timer = self._timers[label] = self.duration.labels(label)
        timer.observe(seconds)

    def failed(self, label: str, exc: BaseException) -> None:
        self.errors.labels(label, error_kind(exc)).inc()

    def client(self, pool: aioredis.ConnectionPool) -> aioredis.Redis:
        """A client on ``pool`` (which it owns, as ``Redis.from_pool``) whose
        commands and pipelines are measured here."""
        client = MeteredRedis.from_pool(pool)
        client.meter = self
        return client

    def cluster_client(self, **options: Any) -> RetryingRedisCluster:
        """A Redis Cluster client (``RedisCluster(**options)``) whose commands are measured here."""
        client = MeteredRedisCluster(**options)
        client.meter = self
        return client


class _Metered:
    """Each command measured (:class:`RedisMetrics`), for a redis-py client class."""

    meter: RedisMetrics

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        meter = self.meter
        label = meter.label(args)
        started = time.perf_counter()
        try:
            reply = await super().execute_command(*args, **options)
        except Exception as exc:
            meter.failed(label, exc)
            raise
        if args[0] not in BLOCKING_COMMANDS:
            meter.observe(label, time.perf_counter() - started)
        return reply


class MeteredRedis(_Metered, aioredis.Redis):
    """redis-py's asyncio client with each command and pipeline measured."""

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> aioredis.client.Pipeline:
        pipe = MeteredPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.meter = self.meter
        return pipe


class MeteredRedisCluster(_Metered, RetryingRedisCluster):
    """redis-py's asyncio cluster client with each command measured (its
    pipelines, which split by node, are not timed)."""


class MeteredPipeline(aioredis.client.Pipeline):
    """A pipeline whose ``execute`` (one round trip) is measured."""

    meter: RedisMetrics

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack
        if not stack:
            return await super().execute(raise_on_error)
        meter = self.meter
        # Named by its script when it runs one (a commit's pipeline stages its checkpoint first).
        label = meter.label(next((c[0] for c in stack if c[0][0] == "EVALSHA"), stack[0][0]))
        started = time.perf_counter()
        try:
            replies = await super().execute(raise_on_error)
        except Exception as exc:
            meter.failed(label, exc)
            raise
        meter.observe(label, time.perf_counter() - started)
        return replies


# -- gateway ---------------------------------------------------------------------------------------

#: How a connection's handshake ended (``switchboard_gateway_handshakes_total``).
HANDSHAKE_OUTCOMES = (
    "welcome",               # hello accepted: the connection is served
    "origin_refused",        # HTTP 403: a browser Origin not in ALLOWED_ORIGINS
    "too_many_connections",  # MAX_UNAUTHENTICATED_PER_IP, MAX_CONNECTIONS_PER_IP or MAX_DEVICES_PER_USER (4005)
    "hello_timeout",         # no hello within HELLO_TIMEOUT (4003)
    "bad_hello",             # the first frame is not a valid frame (4002)
    "hello_required",        # the first frame is another frame (4002)
    "unauthorized",          # the token was refused (4001)
    "unavailable",           # Redis failed during admission or hello (1011)
    "abandoned",             # the client went away before hello
)

#: Client frame types, plus ``invalid`` (not decodable) and ``refused``
#: (dropped undecoded by MAX_FRAMES_PER_SECOND).
RECEIVED_TYPES = ("hello", "send", "cancel", "resume", "regenerate", "edit", "ack", "history", "conversations",
                  "rename", "ping", "refresh", "clear", "invalid", "refused")
_RECEIVED_BY_CLASS = {p.Hello: "hello", p.Send: "send", p.Cancel: "cancel", p.Resume: "resume",
                      p.Regenerate: "regenerate", p.Edit: "edit", p.Ack: "ack", p.History: "history",
                      p.Conversations: "conversations", p.Rename: "rename", p.Clear: "clear", p.Ping: "ping",
                      p.Refresh: "refresh"}
#: Server frame types.
SENT_TYPES = ("welcome", "accepted", "event", "history", "conversations", "pong", "refreshed", "error", OTHER)

#: Every server frame is a tagged msgspec Struct encoded tag first:
#: ``{"type":"<tag>",...``; an event continues ``"id":"<ms>-<seq>"`` and an
#: error ``"code":"<code>"`` (the order of their fields in :mod:`.protocol`;
#: a test pins both).
_TYPE_AT = len(b'{"type":"')
_EVENT_HEAD = b'{"type":"event","id":"'
_ERROR_HEAD = b'{"type":"error","code":"'

#: Close codes counted by value; any other a client sends is ``other``.
CLOSE_CODES = tuple(str(int(code)) for code in p.CloseCode) + ("1002", "1003", "1005", "1006", "1007", "1008",
                                                               "1010")

#: Resume sources of a welcome (:class:`switchboard.gateway.resume.Resume`).
RESUME_SOURCES = ("last_id", "offset", "new")


def frame_type_key(frame: bytes) -> bytes:
    """What identifies an encoded server frame's type: the first three bytes
    of its tag (unique among the server frames)."""
    return frame[_TYPE_AT:_TYPE_AT + 3]


def event_ms(frame: bytes) -> int | None:
    """The millisecond part of an encoded event frame's id (the commit's
    Redis time); None if ``frame`` is not an event."""
    if not frame.startswith(_EVENT_HEAD):
        return None
    end = frame.find(b"-", len(_EVENT_HEAD), len(_EVENT_HEAD) + 21)
    digits = frame[len(_EVENT_HEAD):end]
    return int(digits) if end > 0 and digits.isdigit() else None


def error_code(frame: bytes) -> str | None:
    """The ``code`` of an encoded error frame; None if it is not one."""
    if not frame.startswith(_ERROR_HEAD):
        return None
    end = frame.find(b'"', len(_ERROR_HEAD), len(_ERROR_HEAD) + 64)
    return frame[len(_ERROR_HEAD):end].decode("ascii", "replace") if end > 0 else None


class GatewayMetrics(Metrics):
    """What a gateway counts: connections, handshakes, frames, accepted
    messages, errors and closes by code, resumes, delivered events and
    their lag."""

    tier = "gateway"

    def __init__(self, registry: CollectorRegistry | None = None, *, max_commands: int = MAX_COMMAND_LABELS):
        super().__init__(registry, max_commands=max_commands)
        self.connections = self.gauge("connections", "Open WebSocket connections (before and after hello)")
        self.welcomed = self.gauge("welcomed_connections", "Connections past welcome, served events")
        self.handshakes = _children(self.counter("handshakes_total", "Handshakes by how they ended", ["outcome"]),
                                    HANDSHAKE_OUTCOMES)
        self.received = _children(self.counter("frames_received_total", "Client frames by type", ["type"]),
                                  RECEIVED_TYPES)
        self._received_by_class = {cls: self.received[name] for cls, name in _RECEIVED_BY_CLASS.items()}
        sent = _children(self.counter("frames_sent_total", "Server frames written to sockets, by type", ["type"]),
                         SENT_TYPES)
        self.sent = sent
        self._sent_by_key = {frame_type_key(f'{{"type":"{name}"'.encode()): sent[name] for name in SENT_TYPES
                             if name != OTHER}
        self._sent_event, self._sent_error, self._sent_other = sent["event"], sent["error"], sent[OTHER]
        accepted = self.counter("messages_accepted_total", "Sends accepted, new or a repeat of a client_msg_id",
                                ["outcome"])
        self.accepted_new, self.accepted_repeat = accepted.labels("new"), accepted.labels("repeat")
        self.errors = _children(self.counter("errors_total", "Error frames sent, by code", ["code"]),
                                [code.value for code in p.ErrorCode] + [OTHER])
        self.closes = _children(self.counter("closes_total", "Connections ended, by WebSocket close code", ["code"]),
                                CLOSE_CODES + (OTHER,))
        replays = self.counter("replays_total", "Welcomes, by whether the resume is exact and what it started from",
                               ["recovered", "source"])
        self.replays = {(recovered, source): replays.labels(str(recovered).lower(), source)
                        for recovered in (True, False) for source in RESUME_SOURCES}
        events = self.counter("events_delivered_total",
                              "Events written to sockets: live (committed after the hello) or replayed", ["phase"])
        self.events_live, self.events_replayed = events.labels("live"), events.labels("replay")
        self.delivery_lag = self.histogram("delivery_lag_seconds",
                                           "Live events, from their commit (the stream id's Redis time) to the "
                                           "socket write (this host's clock)", DELIVERY_BUCKETS)

    def frame_received(self, frame: p.ClientFrame) -> None:
        self._received_by_class[type(frame)].inc()

    def replay(self, recovered: bool, source: str) -> None:
        child = self.replays.get((recovered, source))
        if child is not None:
            child.inc()

    def error(self, code: str) -> None:
        (self.errors.get(code) or self.errors[OTHER]).inc()

    def closed(self, code: int) -> None:
        (self.closes.get(str(code)) or self.closes[OTHER]).inc()

    def written(self, frames: Sequence[bytes], live_after_ms: int) -> None:
        """Count frames just written to one connection's socket: by type,
        error frames by code, events as live or replayed (an event whose
        commit millisecond is after ``live_after_ms``, the newest event of
        the stream at hello, is live) and the delivery lag of live ones."""
        by_key = self._sent_by_key
        event, error = self._sent_event, self._sent_error
        now_ms = 0.0
        for frame in frames:
            child = by_key.get(frame[_TYPE_AT:_TYPE_AT + 3], self._sent_other)
            child.inc()
            if child is event:
                ms = event_ms(frame)
                if ms is None or ms <= live_after_ms:
                    self.events_replayed.inc()
                    continue
                if not now_ms:
                    now_ms = time.time() * 1000.0
                self.events_live.inc()
                self.delivery_lag.observe(max(0.0, now_ms - ms) / 1000.0)
            elif child is error:
                self.error(error_code(frame) or OTHER)


# -- worker ------------------------------------------------------------------------------------------

#: How a turn ended (``switchboard_worker_turns_total``): what its commit answered.
TURN_OUTCOMES = (
    "assistant",     # the reply was committed
    "turn_error",    # the last attempt failed: turn_error committed, the message dead-lettered
    "cancelled",     # stopped (cancel, if_busy: interrupt): cancelled committed, its checkpoint dropped
    "cleared",       # a clear: cleared committed, the old generation's checkpoints deleted
    "interrupt",     # the graph asked the person (interrupt): the event committed, the turn waits for a resume
    "already_done",  # committed before (a retried commit, or another worker)
    "moved",         # done moved elsewhere meanwhile: nothing written
    "lease_lost",    # the lease was another worker's: nothing written
)


class WorkerMetrics(Metrics):
    """What a worker counts: turns by outcome, their duration, queue wait,
    graph time and first delta; failed attempts and dead letters; the
    backlog per work shard, dead-letter length, leases and slots."""

    tier = "worker"

    def __init__(self, registry: CollectorRegistry | None = None, *, work_shards: int = 1,
                 max_commands: int = MAX_COMMAND_LABELS):
        super().__init__(registry, max_commands=max_commands)
        self.turns = _children(self.counter("turns_total", "Turns by outcome (the commit's answer)", ["outcome"]),
                               TURN_OUTCOMES)
        self.turn_duration = self.histogram("turn_duration_seconds",
                                            "From a turn's start (its entry taken) to its commit's answer",
                                            TURN_BUCKETS)
        self.queue_wait = self.histogram("queue_wait_seconds",
                                         "From a message's accept (its entry id's Redis time) to its first "
                                         "attempt's start (this host's clock)", QUEUE_BUCKETS)
        self.graph_duration = self.histogram("graph_duration_seconds", "One attempt's graph run (ainvoke)",
                                             TURN_BUCKETS)
        self.first_delta = self.histogram("first_delta_seconds",
                                          "From an attempt's start to its first delta written", FIRST_DELTA_BUCKETS)
        self.attempts_failed = self.counter("attempts_failed_total",
                                            "Attempts the graph failed (raised, or exceeded TURN_TIMEOUT)")
        self.dead_letters = self.counter("dead_letters_total", "Messages given up on after MAX_ATTEMPTS")
        shards = [str(i) for i in range(work_shards)]
        self.work_pending = _children(self.gauge(
            "work_pending_notices", "Notices taken by workers and not yet acknowledged, per work shard "
            "(group 'workers'; every worker reports the same value)", ["shard"]), shards)
        self.work_lag = _children(self.gauge(
            "work_lag_notices", "Notices not yet read by any worker, per work shard (group 'workers'; every worker "
            "reports the same value)", ["shard"]), shards)
        self.dead_letter_entries = self.gauge("dead_letter_entries",
                                              "Entries of the dead-letter stream (every worker reports it)")
        self.leases = self.gauge("leases_held", "Conversation leases this worker holds")
        self.taken = self.gauge("conversations_taken", "Conversations taken: running or waiting for a slot")
        self.slots_busy = self.gauge("slots_busy", "Turn slots in use (of WORKER_CONCURRENCY)")

    def backlog(self, groups: Sequence[Sequence[Mapping[str, Any]] | BaseException], group: str,
                dead_letters: Any) -> None:
        """Set the backlog gauges from ``XINFO GROUPS`` of each work stream
        (in shard order) and ``XLEN`` of the dead letters (replies of one
        pipeline; an error in place of a reply leaves its gauge as it was)."""
        for shard, reply in enumerate(groups):
            if isinstance(reply, BaseException) or str(shard) not in self.work_pending:
                continue
            for info in reply:
                if info.get("name") == group:
                    self.work_pending[str(shard)].set(int(info.get("pending") or 0))
                    lag = info.get("lag")
                    if lag is not None:  # nil when Redis cannot compute it (entries deleted)
                        self.work_lag[str(shard)].set(int(lag))
        if isinstance(dead_letters, int):
            self.dead_letter_entries.set(dead_letters)


# -- fanout ------------------------------------------------------------------------------------------


class FanoutMetrics(Metrics):
    """What a fanout counts: attached users and connections, rounds,
    delivery messages (batches) and the events in them; users read vs
    delivered from notices, deferrals (at scrape, from ``Fanout.counts``)."""

    tier = "fanout"

    def __init__(self, registry: CollectorRegistry | None = None, *, max_commands: int = MAX_COMMAND_LABELS):
        super().__init__(registry, max_commands=max_commands)
        self.users = self.gauge("attached_users", "Users with connections attached here")
        self.attachments = self.gauge("attachments", "Connections attached here")
        self.rounds = self.counter("rounds_total", "Pump rounds (one Redis round trip each, at most two)")
        self.batches = self.counter("batches_total", "Delivery messages published to gateways")
        self.events = self.counter("batch_events_total", "Events in the delivery messages published")

    def count_users(self, counts: Mapping[str, int]) -> None:
        """Export the fanout's own counts of users handled per round: read
        from the stream, delivered from notices, deferred by the round budget."""
        for key, what, doc in (("reads", "users_read_total", "Users whose stream was read for a round"),
                               ("direct", "users_from_notices_total", "Users delivered from their notices, no read"),
                               ("deferred", "users_deferred_total", "Users put off to the next round by "
                                                                     "FANOUT_ROUND_BYTES")):
            self.registry.register(callback_counter(_name(self.tier, what), doc, lambda key=key: counts[key]))

