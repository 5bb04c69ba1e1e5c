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


async def _attempts_started(marks, count: int, device: Device, cmid: str, timeout: float = 30.0) -> None:
    """Wait until the slow graph has marked ``count`` attempts (a line each)
    at the message ``cmid``, which must not have been answered meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sum(len(m.read_text().splitlines()) for m in marks.glob("*")) < count:
        assert not device.replies(cmid), f"answered before attempt {count} began: {device.replies(cmid)}"
        assert loop.time() < deadline, f"fewer than {count} attempts started in {timeout} s"
        await asyncio.sleep(0.02)


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
        # A last message (the conversation's turns run in order): once its
        # reply is in, a repeated reply or event would have come before it.
        await phone.send("c", "last", "sleep:0 the last one")
        await phone.wait_reply("last", timeout=60)
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        stream = await client.xrange(keys.outbound(user))
        await client.aclose()
        replies = [f["cmid"] for _, f in stream if f["kind"] == "assistant"]
        assert sorted(replies) == sorted([*(f"m{i}" for i in range(10)), "last"])  # each exactly once
        assert phone.event_ids() == [entry_id for entry_id, _ in stream]  # and the device saw them all, once
        assert all(s.process.poll() is None for s in cluster.services.values())  # everyone rode it out
        await phone.close()
    finally:
        cluster.stop()
        server.stop()


async def test_a_redis_outage_does_not_use_up_a_messages_attempts(tmp_path):
    """An attempt cut short by Redis going away is not the message's fault:
    with MAX_ATTEMPTS=1 a turn interrupted by two outages still gets its
    reply, never a ``turn_error``, and nothing is dead-lettered."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), appendfsync="always")
    server.start()
    marks = tmp_path / "marks"
    cluster = Cluster(server.url, tmp_path)
    try:
        cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"),
                           GRAPH="tests.support.graphs:slow", MAX_ATTEMPTS="1", SLOW_GRAPH_MARKS=str(marks))
        user = f"user-{uuid.uuid4().hex[:8]}"
        phone = Device(cluster.services["gw"].url, token(user), "phone")
        await phone.connect()
        await phone.send("c", "m0", "sleep:3 the message")
        await phone.wait_frame("accepted", client_msg_id="m0")
        for outage in range(2):
            # Wait for an attempt to be running, then take Redis away under it.
            started = outage + 1
            await _attempts_started(marks, started, phone, "m0")
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            # Down for longer than a lease renewal interval (LEASE_TTL / 3):
            # the worker notices the outage while the attempt is running. The
            # second outage outlasts the connections' retries, so the worker's
            # own retry of the conversation fails at least once more first.
            await asyncio.sleep(1.5 if outage == 0 else 4.0)
            server.start()

        reply = await phone.wait_reply("m0", timeout=60)
        assert reply["kind"] == "assistant", reply
        assert reply["text"] == "reply 1 to: sleep:3 the message"
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        dead = await client.xrange(keys.dead_letters())
        stream = await client.xrange(keys.outbound(user))
        await client.aclose()
        assert dead == []
        assert [f["kind"] for _, f in stream if f["cmid"] == "m0"] == ["user", "assistant"]
        await phone.close()
    finally:
        cluster.stop()
        server.stop()
