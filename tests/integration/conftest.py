from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from switchboard.embedded_redis import EmbeddedRedis, free_port
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


@pytest.fixture
def own_redis(tmp_path, request):
    """A Redis of this test's own, to stop and start again, and services on
    it (with the test module's ``OWN_REDIS_ENV``); their logs print on failure."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    cluster = Cluster(server.url, tmp_path, env=dict(getattr(request.module, "OWN_REDIS_ENV", {})))
    try:
        yield server, cluster
    finally:
        cluster.stop()
        server.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())
