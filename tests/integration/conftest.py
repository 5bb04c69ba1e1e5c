from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.support.cluster import Cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def cluster(clean_redis: str, tmp_path, request):
    """Service processes on a freshly emptied Redis; their logs print on failure."""
    c = Cluster(clean_redis, tmp_path)
    try:
        yield c
    finally:
        c.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(c.logs())


@pytest.fixture
async def redis_client(cluster):
    """A client of the cluster's Redis (replies decoded), to compare with what devices saw."""
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    yield client
    await client.aclose()
