"""Redis behind Sentinel (``REDIS_URL=redis+sentinel://…/MASTER``): every tier
finds the master through the sentinels, and a failover during a run -- the
master killed with ``kill -9``, its replica promoted -- is ridden out like a
Redis restart: every accepted message is answered once and every device sees
each event once, in order, from the new master.

The set (tests/support/sentinels.py) is a master, a replica and three
sentinels made from the embedded server."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid

import redis.asyncio as aioredis

from switchboard.shared import keys
from switchboard.shared.connection import make_client
from switchboard.shared.settings import RedisSettings
from tests.support.client import Device
from tests.support.cluster import Cluster, token
from tests.support.sentinels import SentinelSet


async def _replicated(client: aioredis.Redis) -> None:
    """Until the replica has everything the master has (asynchronous
    replication: what is not there yet a failover loses, docs/guarantees.md)."""
    assert await client.execute_command("WAIT", 1, 10_000) >= 1


@contextlib.asynccontextmanager
async def _running(tmp_path, **env: str):
    """A sentinel set, the three services on it (the slow graph) and an
    operator client of the master: ``(sentinels, cluster, operator)``."""
    with SentinelSet(tmp_path / "sentinel") as sentinels:
        operator = make_client(RedisSettings(url=sentinels.url, sentinel_password=sentinels.sentinel_password))
        cluster = Cluster(sentinels.url, tmp_path, env={"REDIS_SENTINEL_PASSWORD": sentinels.sentinel_password, **env})
        try:
            cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"),
                               GRAPH="tests.support.graphs:slow")
            yield sentinels, cluster, operator
        finally:
            await operator.aclose()
            cluster.stop()


async def test_a_sentinel_failover_mid_run_loses_nothing_replicated(tmp_path):
    async with _running(tmp_path) as (sentinels, cluster, operator):
        user = f"user-{uuid.uuid4().hex[:8]}"
        phone = Device(cluster.services["gw"].url, token(user), "phone")
        await phone.connect()
        await phone.send("c", "first", "sleep:0 before the failover")
        assert (await phone.wait_reply("first"))["text"] == "reply 1 to: sleep:0 before the failover"
        for i in range(6):
            await phone.send("c", f"m{i}", f"sleep:0.3 message {i}")
        await phone.wait_for(lambda: len([f for f in phone.frames if f["type"] == "accepted"]) == 7)
        await _replicated(operator)

        old = sentinels.kill_master()  # turns are running: the worker is mid-graph
        new = sentinels.wait_failover(old)
        assert new is not old

        for i in range(6):
            await phone.wait_reply(f"m{i}", timeout=60)
        await phone.send("c", "last", "sleep:0 after the failover")
        await phone.wait_reply("last", timeout=60)
        sentinels.restart(old)  # back as the new master's replica
        sentinels.wait_replicated()

        stream = await operator.xrange(keys.outbound(user))
        replies = [f["cmid"] for _, f in stream if f["kind"] == "assistant"]
        assert sorted(replies) == sorted(["first", *(f"m{i}" for i in range(6)), "last"])  # each once
        assert phone.event_ids() == [entry_id for entry_id, _ in stream]  # seen once each, in order
        assert all(s.process.poll() is None for s in cluster.services.values())  # everyone rode it out
        assert cluster.tiers, "the services logged in as their tiers' users"

        # A device connecting now, to the new master, replays the same history.
        laptop = Device(cluster.services["gw"].url, token(user), "laptop")
        await laptop.connect()
        await laptop.wait_for(lambda: len(laptop.event_ids()) == len(stream))
        assert laptop.event_ids() == phone.event_ids()
        await phone.close()
        await laptop.close()


async def test_with_wait_replicas_accepted_means_on_the_replica(tmp_path):
    """``REDIS_WAIT_REPLICAS=1``: ``accepted`` comes only once the replica has
    the message. With the replica stopped, a send gets ``unavailable`` after
    ``REDIS_WAIT_TIMEOUT_MS`` (and so does its resend); resent once the
    replica is back, it is accepted under the id it was stored with, and
    answered once. Then the master is killed the moment messages are
    accepted, with no wait of the test's own: every one is answered."""
    async with _running(tmp_path, REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="300") as (sentinels, cluster,
                                                                                         operator):
        user = f"user-{uuid.uuid4().hex[:8]}"
        phone = Device(cluster.services["gw"].url, token(user), "phone")
        await phone.connect()
        await phone.send("c", "first", "sleep:0 with the replica up")
        await phone.wait_reply("first")

        replica = sentinels.replica()
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # the send, and its resend while the replica is still away
                started = time.monotonic()
                await phone.send("c", "late", "sleep:0 with the replica stopped")
                refused = await phone.wait_frame("error", client_msg_id="late")
                assert refused["code"] == "unavailable", refused
                assert time.monotonic() - started >= 0.3  # it waited REDIS_WAIT_TIMEOUT_MS first
                phone.frames.remove(refused)
            assert not [f for f in phone.frames if f["type"] == "accepted" and f["client_msg_id"] == "late"]
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        stored = [f["in"] for _, f in await operator.xrange(keys.outbound(user))
                  if f["kind"] == "user" and f.get("cmid") == "late"]
        assert len(stored) == 1  # on the master, written once
        await phone.send("c", "late", "sleep:0 with the replica stopped")
        accepted = await phone.wait_frame("accepted", client_msg_id="late")
        assert accepted["id"] == stored[0]  # the id it was stored with
        await phone.wait_reply("late")

        for i in range(3):
            await phone.send("c", f"m{i}", f"sleep:0.3 message {i}")
        await phone.wait_for(lambda: {f["client_msg_id"] for f in phone.frames if f["type"] == "accepted"}
                             >= {"m0", "m1", "m2"})
        old = sentinels.kill_master()  # at once: what was accepted is on the replica already
        sentinels.wait_failover(old)
        for i in range(3):
            await phone.wait_reply(f"m{i}", timeout=60)

        stream = await operator.xrange(keys.outbound(user))
        replies = [f["cmid"] for _, f in stream if f["kind"] == "assistant"]
        assert sorted(replies) == ["first", "late", "m0", "m1", "m2"]  # each once
        assert all(s.process.poll() is None for s in cluster.services.values())
        await phone.close()
