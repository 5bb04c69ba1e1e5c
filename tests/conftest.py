"""Test fixtures: a real Redis for the whole session.

When ``REDIS_URL`` is set the suite uses that server; otherwise it starts the
embedded Redis (Redis 8.2 + RediSearch + RedisJSON) on a free loopback port
with its data in a temporary directory.
"""

from __future__ import annotations

import os

import pytest
import redis

from switchboard.embedded_redis import EmbeddedRedis, free_port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The Redis, emptied: for tests that start services sharing work streams."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    return redis_url
