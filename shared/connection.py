"""Redis clients for the services.

redis-py's asyncio ``ConnectionPool`` raises ``MaxConnectionsError`` when the pool
is exhausted; a ``BlockingConnectionPool`` makes callers wait instead, which is
what a bounded service wants. The socket timeout must exceed every blocking
stream read (``BLOCK``), or a reply can be lost mid-flight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

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
