"""Redis clients for the services.

redis-py's asyncio ``ConnectionPool`` raises ``MaxConnectionsError`` when the pool
is exhausted; a ``BlockingConnectionPool`` makes callers wait instead, which is
what a bounded service wants. The socket timeout must exceed every blocking
stream read (``BLOCK``), or a reply can be lost mid-flight.

*Restarts.* When Redis restarts, every pooled connection is dead, and each
is found dead only when a command is sent on it: without a retry, the first
command on each stale connection would fail after Redis is back. The pool's
connections therefore retry a command once more (after reconnecting) on a
connection error -- the error a stale connection gives, and the one a
restarting Redis gives while it loads (``LOADING``, a ``BusyLoadingError``).
Timeouts are not retried: the command may be running. A retried command may
have run already (the connection broke after Redis executed it and before
the reply), so every command the services send is safe to repeat: the
scripts check state first (the accept's dedup key, the commit's ``done``,
a delta's ``seq``), and a repeated notice or publish is harmless.
Subscriptions are the exception (:func:`make_subscriber`): a lost one must
be noticed, not papered over.

*Sentinel.* A ``redis+sentinel://`` URL (:func:`~.redis_url.sentinel_target`)
names sentinels and a master name instead of a server. The pool then asks a
sentinel for the master's address whenever it opens a connection; a
connection to a server that has become a replica answers ``READONLY``, which
redis-py turns into a connection error, so a failover looks to the services
like a restart of Redis: the connection retries above, then the services' own
outage handling, ride it out, on whichever server is master then.

*Credentials.* Each tier logs in as its own ACL user (``shared/acl.py``):
``RedisSettings.username``/``password``, from ``REDIS_USERNAME`` and
``REDIS_PASSWORD``/``REDIS_PASSWORD_FILE`` or the URL. ``settings.url``
never holds the password, so it may be logged; any other URL goes through
:func:`~.redis_url.redacted` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.cluster
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import cluster
from .cluster import RetryingRedisCluster
from .errors import SwitchboardError
from .metrics import RedisMetrics
from .redis_url import SENTINEL_SCHEME, cluster_nodes, sentinel_target
from .settings import RedisSettings

#: Retries of a command on a connection error (a stale pooled connection
#: reconnects on the first); with back-off, they also ride out a short blip.
RETRIES = 3


class SentinelConnection(aiosentinel.SentinelManagedConnection):
    """A connection to the master the sentinels name *now*, on every connect.

    redis-py's own asks a sentinel only when the pool hands the connection
    out; a command retried after its connection broke reconnects to the
    address it had, so after a failover every retry would knock at the dead
    master and each pooled connection would fail a command. Here any
    reconnect asks first (a connection to a replica is not made)."""

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)

    async def connect(self) -> None:
        await aioredis.Connection.connect(self)  # the retries of a plain connection, each asking a sentinel


class BlockingSentinelPool(aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A sentinel's pool that, like :class:`~redis.asyncio.BlockingConnectionPool`,
    makes callers wait for a free connection instead of failing."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, connection_class=SentinelConnection, **kwargs)


class SeedConnection(aioredis.Connection):
    """A connection to the first of a cluster's seed nodes that answers and
    is a master, tried in turn from the one that last was (for a subscriber:
    see :func:`make_subscriber`). Not a replica: ``PUBSUB NUMSUB`` through the
    cluster client asks the masters only, so a subscription on a replica
    would not be counted."""

    def __init__(self, *, seeds: Sequence[tuple[str, int]], **kwargs: Any) -> None:
        self.seeds = list(seeds)
        super().__init__(host=self.seeds[0][0], port=self.seeds[0][1], **kwargs)

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self.is_connected:
            return
        start = next((i for i, seed in enumerate(self.seeds) if seed == (self.host, self.port)), 0)
        failure: BaseException | None = None
        for host, port in self.seeds[start:] + self.seeds[:start]:
            self.host, self.port = host, port
            try:
                await super().connect_check_health(check_health=check_health,
                                                   retry_socket_connect=retry_socket_connect)
                if await self._is_master():
                    return
                failure = RedisConnectionError(f"{host}:{port} is not a master")
            except (RedisConnectionError, OSError, TimeoutError) as exc:
                failure = exc
            await self.disconnect()
        assert failure is not None
        raise failure

    async def _is_master(self) -> bool:
        """Whether this node owns slots (``CLUSTER MYID`` among ``CLUSTER SLOTS``' masters)."""
        await self.send_command("CLUSTER", "MYID", check_health=False)
        me = self._text(await self.read_response())
        await self.send_command("CLUSTER", "SLOTS", check_health=False)
        return any(len(row) > 2 and len(row[2]) > 2 and self._text(row[2][2]) == me
                   for row in await self.read_response())

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)


#: How long a sentinel may take to answer who the master is.
SENTINEL_TIMEOUT = 2.0


def _sentinel(settings: RedisSettings, module: Any) -> Any:
    """The ``Sentinel`` (of redis-py's ``module``: ``redis.sentinel`` or its
    asyncio twin) for a ``redis+sentinel://`` URL, and the target it names."""
    target = sentinel_target(settings.url)
    sentinel_kwargs = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
    if settings.sentinel_password is not None:
        sentinel_kwargs.update(username=settings.sentinel_username, password=settings.sentinel_password)
    return module.Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs), target


def _retrying() -> dict[str, Any]:
    """A pool's connection options for retrying a command on a connection error (module notes)."""
    return {"retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), RETRIES,
                           supported_errors=(RedisConnectionError,))}


def make_pool(settings: RedisSettings, *, max_connections: int | None = None,
              decode: bool = True, retry: bool = True) -> aioredis.BlockingConnectionPool:
    options: dict[str, Any] = _retrying() if retry else {}
    options.update(
        username=settings.username,
        password=settings.password,
        max_connections=max_connections or settings.max_connections,
        timeout=settings.socket_timeout,  # wait this long for a free connection
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        decode_responses=decode,
    )
    if settings.url.startswith(SENTINEL_SCHEME + ":"):
        sentinel, target = _sentinel(settings, aiosentinel)
        return BlockingSentinelPool(target.master, sentinel, db=target.db, **options)
    # The URL is without credentials (RedisSettings moves them out of it).
    return aioredis.BlockingConnectionPool.from_url(settings.url, **options)


def make_client(settings: RedisSettings, *, max_connections: int | None = None,
                decode: bool = True, metrics: RedisMetrics | None = None) -> aioredis.Redis:
    """A client on its own blocking pool; the caller closes it with ``aclose()``.

    ``decode=False`` keeps replies as bytes (msgpack payloads, the checkpointer).
    ``metrics``: each command's round trip and errors are recorded there.
    A ``redis+cluster://`` URL gives a Redis Cluster client (:func:`make_cluster_client`).
    """
    if settings.cluster:
        return make_cluster_client(settings, max_connections=max_connections, decode=decode, metrics=metrics)
    pool = make_pool(settings, max_connections=max_connections, decode=decode)
    if metrics is not None:
        return metrics.client(pool)
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) its pool


def make_cluster_client(settings: RedisSettings, *, max_connections: int | None = None, decode: bool = True,
                        metrics: RedisMetrics | None = None) -> RetryingRedisCluster:
    """A Redis Cluster client for a ``redis+cluster://`` URL: it learns the
    slots from the seed nodes, sends each command to the master of its keys'
    slot, follows ``MOVED``/``ASK`` and retries ``TRYAGAIN`` while a slot
    moves (:mod:`.cluster`). Every script's keys
    share one user's slot (``shared/keys.py``), so every script runs on one
    node. RESP2: what the checkpointer's search client parses on a cluster.
    ``max_connections`` is per node."""
    options: dict[str, Any] = dict(
        startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in cluster_nodes(settings.url)],
        username=settings.username, password=settings.password, decode_responses=decode, protocol=2,
        max_connections=max_connections or settings.max_connections, socket_timeout=settings.socket_timeout,
        socket_connect_timeout=5.0, health_check_interval=30)
    if metrics is not None:
        return metrics.cluster_client(**options)
    return RetryingRedisCluster(**options)


def make_subscriber(settings: RedisSettings, *, decode: bool = False) -> aioredis.Redis:
    """A client for pub/sub subscriptions only: its connections do not retry.

    Pub/sub is at-most-once: whatever is published while a subscription is
    down is lost, so its owner must *see* the loss and repair it (the gateway
    re-attaches its connections from their cursors; the fanout starts a new
    incarnation). A retrying connection would reconnect and re-subscribe on
    its own, silently.

    On a Redis Cluster the subscriber is a plain connection to any one node
    (the first seed that answers, in an order of the process's own): a
    classic ``PUBLISH`` reaches every node's subscribers, wherever it was sent. A node that dies ends the
    subscription, as a restart of a single Redis does; its owner subscribes
    again, on the next seed that answers."""
    if settings.cluster:
        return aioredis.Redis.from_pool(_seed_pool(settings, max_connections=4, decode=decode, retry=False))
    return aioredis.Redis.from_pool(make_pool(settings, max_connections=4, decode=decode, retry=False))


def make_publisher(settings: RedisSettings, *, decode: bool = False) -> aioredis.Redis | None:
    """On a Redis Cluster, a client for pipelines of ``PUBLISH`` (which a
    cluster pipeline refuses): a plain connection to any one node, from
    which the cluster passes each message to every node's subscribers
    (their counts in the reply are that node's only). None elsewhere: any
    client publishes."""
    if not settings.cluster:
        return None
    return aioredis.Redis.from_pool(_seed_pool(settings, max_connections=8, decode=decode, retry=True))


def _seed_pool(settings: RedisSettings, *, max_connections: int, decode: bool,
               retry: bool) -> aioredis.BlockingConnectionPool:
    """A pool of :class:`SeedConnection` to a cluster's seed nodes, in an
    order of its own: a classic subscription and a ``PUBLISH`` cost the node
    they are on the delivery of every message, so they are spread."""
    options: dict[str, Any] = _retrying() if retry else {}
    seeds = list(cluster_nodes(settings.url))
    random.shuffle(seeds)  # each process starts at another node: the subscribers spread over the cluster
    return aioredis.BlockingConnectionPool(
        connection_class=SeedConnection, seeds=seeds, username=settings.username,
        password=settings.password, max_connections=max_connections, timeout=settings.socket_timeout,
        socket_timeout=settings.socket_timeout, socket_connect_timeout=5.0, health_check_interval=30,
        decode_responses=decode, **options)


def make_sync_client(settings: RedisSettings, *, decode: bool = True) -> redis.Redis:
    """A synchronous client, for the command line's one-off reads
    (``switchboard deadletters``); the caller closes it."""
    if settings.cluster:
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in cluster_nodes(settings.url)],
            username=settings.username, password=settings.password, socket_timeout=settings.socket_timeout,
            socket_connect_timeout=5.0, decode_responses=decode, protocol=2)
    if settings.url.startswith(SENTINEL_SCHEME + ":"):
        sentinel, target = _sentinel(settings, redis.sentinel)
        return sentinel.master_for(target.master, db=target.db, username=settings.username,
                                   password=settings.password, socket_timeout=settings.socket_timeout,
                                   socket_connect_timeout=5.0, decode_responses=decode)
    return redis.Redis.from_url(settings.url, username=settings.username, password=settings.password,
                                socket_timeout=settings.socket_timeout, socket_connect_timeout=5.0,
                                decode_responses=decode)


def queue_script(pipe: aioredis.client.Pipeline, script: AsyncScript, keys: Sequence[Any],
                 args: Sequence[Any]) -> None:
    """Queue a script call on a pipeline by its SHA. (redis-py's ``Script``
    on a pipeline asks ``SCRIPT EXISTS`` first at every execute: one more
    round trip each time; run the pipeline with :func:`execute_scripted`.)"""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


async def execute_scripted(client: aioredis.Redis, scripts: Sequence[AsyncScript],
                           fill: Callable[[aioredis.client.Pipeline], None]) -> list[Any]:
    """Run a pipeline that ``fill`` queues (with :func:`queue_script`).

    Redis forgets scripts on a restart or flush and answers ``NOSCRIPT``;
    then the scripts are loaded and the pipeline is filled and run once more,
    so its other commands run twice: they must be safe to repeat."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        fill(pipe)
        try:
            return await pipe.execute()
        except NoScriptError:
            if attempt:
                raise
            for script in scripts:
                await client.script_load(script.script)
    raise AssertionError("unreachable")


class NotReplicated(SwitchboardError):
    """``WAIT``: fewer replicas than asked acknowledged a write in time. The
    write stands on the master; it is only not known to be on a replica."""

    def __init__(self, acknowledged: int, wanted: int, reply: Any = None):
        super().__init__(f"{acknowledged} of {wanted} replicas acknowledged the write in time")
        self.acknowledged = acknowledged
        self.wanted = wanted
        self.reply = reply  #: the script's reply (what stands on the master)


async def run_replicated(client: aioredis.Redis, settings: RedisSettings, script: AsyncScript,
                         keys: Sequence[Any], args: Sequence[Any], *,
                         before: Callable[[aioredis.client.Pipeline], None] | None = None) -> Any:
    """Run ``script`` and, with ``settings.wait_replicas``, ``WAIT`` for that
    many replicas to have what it wrote, or raise :class:`NotReplicated`.
    ``before`` queues commands that go first, in the same round trip (they
    run again if the script must be loaded: they must be safe to repeat).

    ``WAIT`` counts the writes of the connection it is sent on, so both go in
    one pipeline, on one connection (on a cluster, to the master of the
    script's slot: :func:`_execute_waiting`). A script that writes nothing
    leaves nothing to wait for (``WAIT`` then counts the connection's last
    write, of some other call): see :func:`touch_replicated`."""
    if not settings.wait_replicas and before is None:
        return await script(keys=keys, args=args)
    first = 0

    def fill(pipe: aioredis.client.Pipeline) -> None:
        nonlocal first
        if before is not None:
            before(pipe)
        first = len(pipe)
        queue_script(pipe, script, keys, args)

    if not settings.wait_replicas:
        return (await execute_scripted(client, [script], fill))[first]
    replies = await _execute_waiting(client, settings, [script], fill, keys[0])
    reply, acknowledged = replies[first], replies[-1]
    if acknowledged < settings.wait_replicas:
        raise NotReplicated(acknowledged, settings.wait_replicas, reply)
    return reply


async def touch_replicated(client: aioredis.Redis, settings: RedisSettings, key: str, value: str) -> None:
    """Wait, as :func:`run_replicated`, for what was written before: for an
    answer that wrote nothing itself (a repeated ``send``) but vouches for an
    earlier write that may not have reached a replica yet. ``key`` is
    rewritten with the ``value`` it holds (``SET XX KEEPTTL``: nothing changes),
    a write that replication carries after every earlier one, and ``WAIT``
    waits for it."""
    if not settings.wait_replicas:
        return
    replies = await _execute_waiting(client, settings, [],
                                     lambda pipe: pipe.set(key, value, xx=True, keepttl=True), key)
    if replies[-1] < settings.wait_replicas:
        raise NotReplicated(replies[-1], settings.wait_replicas)


async def _execute_waiting(client: Any, settings: RedisSettings, scripts: Sequence[AsyncScript],
                           fill: Callable[[aioredis.client.Pipeline], None], key: str) -> list[Any]:
    """:func:`execute_scripted` with a ``WAIT`` last, on the connection that
    sent the writes ``fill`` queues (all in ``key``'s slot).

    A cluster client would send ``WAIT`` (which has no key) to a node of its
    own choosing, and retries a pipeline's commands one by one, so there the
    pipeline goes on a plain connection to the master of ``key``'s slot, as
    the client knows it (:meth:`~.cluster.RetryingRedisCluster.direct`). A
    node that no longer owns the slot refuses the writes (``MOVED``, or
    ``ASK``/``TRYAGAIN`` while it moves): nothing ran, so the pipeline is
    sent again, once the slot has moved to the owner the client then reads
    from the slot map, for up to :data:`~.cluster.TRYAGAIN_SECONDS`."""

    def waiting(pipe: aioredis.client.Pipeline) -> None:
        fill(pipe)
        pipe.execute_command("WAIT", settings.wait_replicas, settings.wait_timeout_ms)

    if not cluster.is_cluster(client):
        return await execute_scripted(client, scripts, waiting)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cluster.TRYAGAIN_SECONDS
    delay, loaded = 0.02, False
    while True:
        await client.initialize()
        direct = client.direct(client.get_node_from_key(key))
        pipe = direct.pipeline(transaction=False)
        waiting(pipe)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError):
            await _relearn(client)  # a failover: the next call goes to the new master
            raise
        refused = next((r for r in replies if isinstance(r, Exception)), None)
        if refused is None:
            return replies
        if isinstance(refused, NoScriptError) and not loaded:
            for script in scripts:
                await direct.script_load(script.script)
            loaded = True
            continue
        if not isinstance(refused, (AskError, TryAgainError, ClusterDownError)) or loop.time() + delay > deadline:
            raise refused
        if isinstance(refused, MovedError):
            await _relearn(client)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


async def _relearn(client: Any) -> None:
    """Have a cluster client read the slot map again (``CLUSTER SLOTS``):
    after a ``MOVED``, or a master that failed (its replica may own its
    slots now)."""
    with contextlib.suppress(redis.RedisError, OSError):
        await client.nodes_manager.initialize()


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, Redis being unreachable (a
    connection refused, reset or lost, a timeout, Redis still loading) rather
    than by what was asked of it. Libraries that wrap Redis errors in their
    own types (redisvl) keep the original as the cause, so the chain is read.
    A bare ``OSError`` is not one: redis-py raises its own types for its
    sockets, and a graph's own I/O failing is the graph's failure."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
