"""Redis clients for the services.

redis-py's asyncio ``ConnectionPool`` raises ``MaxConnectionsError`` when the pool
is exhausted; a ``BlockingConnectionPool`` makes callers wait instead, which is
what a bounded service wants. The socket timeout must exceed every blocking
stream read (``BLOCK``), or a reply can be lost mid-flight.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from .settings import RedisSettings


def make_pool(settings: RedisSettings, *, max_connections: int | None = None,
              decode: bool = True) -> aioredis.BlockingConnectionPool:
    return aioredis.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=max_connections or settings.max_connections,
        timeout=settings.socket_timeout,  # wait this long for a free connection
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        decode_responses=decode,
    )


def make_client(settings: RedisSettings, *, max_connections: int | None = None,
                decode: bool = True) -> aioredis.Redis:
    """A client on its own blocking pool; the caller closes it with ``aclose()``.

    ``decode=False`` keeps replies as bytes (msgpack payloads, the checkpointer).
    """
    pool = make_pool(settings, max_connections=max_connections, decode=decode)
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) its pool
