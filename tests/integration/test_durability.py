"""What `accepted` survives: the Redis process killed with kill -9 and
restarted from its AOF, under both fsync policies."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest
import redis.asyncio as aioredis

from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.shared import keys
from tests.support.client import Device
from tests.support.cluster import Cluster, token


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
async def test_accepted_messages_survive_redis_being_killed(tmp_path, appendfsync):
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), appendfsync=appendfsync)
    server.start()
    cluster = Cluster(server.url, tmp_path)
    try:
        cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH="tests.support.graphs:slow")
        user = f"user-{uuid.uuid4().hex[:8]}"
        phone = Device(cluster.services["gw"].url, token(user), "phone")
        await phone.connect()
        for i in range(10):
            await phone.send("c", f"m{i}", f"sleep:0.3 message {i}")
        await phone.wait_for(lambda: len([f for f in phone.frames if f["type"] == "accepted"]) == 10)

        server.process.send_signal(signal.SIGKILL)  # no shutdown, no final fsync
        server.process.wait()
        await asyncio.sleep(0.5)
        server.start()

        for i in range(10):
            await phone.wait_reply(f"m{i}", timeout=60)
        await asyncio.sleep(1.0)
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        stream = await client.xrange(keys.outbound(user))
        await client.aclose()
        replies = [f["cmid"] for _, f in stream if f["kind"] == "assistant"]
        assert sorted(replies) == sorted(f"m{i}" for i in range(10))  # each exactly once
        assert phone.event_ids() == [entry_id for entry_id, _ in stream]  # and the device saw them all, once
        assert all(s.process.poll() is None for s in cluster.services.values())  # everyone rode it out
        await phone.close()
    finally:
        cluster.stop()
        server.stop()
