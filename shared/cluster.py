"""The Redis Cluster client the services use (through
:func:`~.connection.make_cluster_client`).

redis-py's asyncio ``RedisCluster`` follows ``MOVED`` and ``ASK`` and
retries ``TRYAGAIN``, but within one budget of 16 attempts, sleeping only in
the last eight (0.05 s each). ``TRYAGAIN`` is what a multi-key command -- every
Switchboard script -- gets while its slot moves to another master and its
keys are split between the two: it lasts as long as the slot's keys take to
migrate, easily longer than that budget. So a command that runs out of it
(``TTL exhausted``, or ``TRYAGAIN`` itself) is sent again here, with back-off,
for up to :data:`TRYAGAIN_SECONDS`. Every command the services send is safe
to repeat (docs/operations.md, "Restarts of Redis").

What must go on one connection to one node -- a write and the ``WAIT`` that
counts it -- goes through :meth:`RetryingRedisCluster.direct`, a plain
client of that node.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.exceptions import ClusterError, TryAgainError

#: How long a command is retried while its slot moves.
TRYAGAIN_SECONDS = 10.0


def is_slot_moving(exc: BaseException) -> bool:
    """Whether ``exc`` is redis-py giving up on a command whose slot is moving."""
    return isinstance(exc, TryAgainError) or (isinstance(exc, ClusterError) and "TTL exhausted" in str(exc))


class RetryingRedisCluster(aiocluster.RedisCluster):
    """``RedisCluster`` whose commands ride out a slot migration (module notes)."""

    #: connections per node of :meth:`direct`'s clients
    DIRECT_CONNECTIONS = 8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._direct: dict[str, aioredis.Redis] = {}

    def direct(self, node: aiocluster.ClusterNode) -> aioredis.Redis:
        """A plain client of ``node`` alone (its own small pool, closed with
        this client), for what must go on one connection to one node
        (``WAIT`` after a write: :func:`~.connection.run_replicated`). Its
        commands are not redirected and not retried: a ``MOVED`` or ``ASK``
        comes back as it is."""
        direct = self._direct.get(node.name)
        if direct is None:
            options = {k: v for k, v in node.connection_kwargs.items() if k != "retry"}
            pool = aioredis.BlockingConnectionPool(connection_class=node.connection_class,
                                                   max_connections=self.DIRECT_CONNECTIONS,
                                                   timeout=options.get("socket_timeout"), **options)
            direct = self._direct[node.name] = aioredis.Redis.from_pool(pool)
        return direct

    async def aclose(self) -> None:
        for direct in self._direct.values():
            await direct.aclose()
        self._direct = {}
        await super().aclose()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TRYAGAIN_SECONDS
        delay = 0.02
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except (TryAgainError, ClusterError) as exc:
                if not is_slot_moving(exc) or loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, aiocluster.RedisCluster)


async def mget(client: Any, keys: Sequence[str]) -> list[Any]:
    """``MGET`` of keys that need not share a slot: on a cluster, one ``MGET``
    per slot, sent to each node in one round trip (not atomic; for reads
    that need no snapshot, as a liveness check does)."""
    if is_cluster(client):
        return await client.mget_nonatomic(list(keys))
    return await client.mget(list(keys))


async def numsub(client: Any, channels: Sequence[str]) -> list[tuple[Any, int]]:
    """``PUBSUB NUMSUB``: each channel's subscribers. A classic subscription
    is counted only by the node it was made on, so on a cluster every node
    is asked and the counts added."""
    if is_cluster(client):
        return await client.pubsub_numsub(*channels, target_nodes=aiocluster.RedisCluster.ALL_NODES)
    return await client.pubsub_numsub(*channels)
