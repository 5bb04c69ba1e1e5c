"""Fixtures of the worker's tests: clients of this test's freshly emptied Redis."""

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def raw(clean_redis):
    """Replies as bytes (checkpoint documents, msgpack)."""
    client = aioredis.Redis.from_url(clean_redis)
    yield client
    await client.aclose()


@pytest.fixture
async def redis(clean_redis):
    """Replies decoded."""
    client = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    yield client
    await client.aclose()
