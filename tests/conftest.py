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


#: Tests that measure a second user's latency, or load the machine for
#: minutes: `make test` runs them on their own, after the rest has run two at
#: a time (pytest-xdist), so neither phase disturbs the other's figures.
SERIAL = {"test_abuse_connections", "test_abuse_delivery", "test_abuse_worker", "test_fairness", "test_fuzz",
          "test_chaos_run", "test_bench_smoke"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SERIAL:
            item.add_marker(pytest.mark.serial)


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


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001 - pytest's hook
    """Say at the end of the run when the web client's browser tests were
    skipped (no chromium or no playwright here), and how to get them to run."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if "tests/browser/" in report.nodeid.replace("\\", "/")]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} browser tests (tests/browser) were skipped: they need Debian's chromium at "
            "/usr/bin/chromium and the playwright package -- `apt-get install chromium`, then `make install`.",
            yellow=True)
