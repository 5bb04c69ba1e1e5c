"""Attacks on the worker tier's Redis cost, each run while a second user is
measured (tests/support/bystander.py).

- Large messages to many new conversations once stalled Redis for everyone:
  each turn scanned a page of 200 whole inbound entries inside a script, and
  a new conversation scanned the user's stream from its start.
- Repeated sends once cost a work notice, a drain and a rescan each.
"""

from __future__ import annotations

import asyncio
import json

from switchboard.gateway.store import GatewayStore
from switchboard.shared import keys
from switchboard.shared.settings import QuotaSettings, StreamSettings
from tests.support.bystander import Bystander, RedisProbe, rss_bytes
from tests.support.client import Device, new_user
from tests.support.cluster import token

BIG = 1_000_000  #: characters: a frame just under MAX_MESSAGE_SIZE (1 MiB)


async def test_a_text_over_max_text_length_is_refused_and_nothing_is_stored(cluster, redis_client):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"))
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "big", "x" * 100_001)
    error = await phone.wait_frame("error", client_msg_id="big")
    assert error["code"] == "text_too_long" and "100000" in error["message"]
    assert await redis_client.exists(keys.inbound(user, "c")) == 0
    assert await redis_client.xlen(keys.outbound(user)) == 0
    await phone.send("c", "fits", "x" * 100_000)
    await phone.wait_frame("accepted", client_msg_id="fits")
    await phone.close()


async def test_large_messages_to_many_new_conversations_do_not_stall_anyone(cluster, redis_client):
    """The attack with the product's limits: 1 MB texts are refused before
    Redis (MAX_TEXT_LENGTH); texts at the limit to a new conversation each
    pass until the minute's byte allowance (SEND_BYTES_PER_MINUTE) is spent,
    and cost Redis the same whatever the user's other conversations hold."""
    defaults = QuotaSettings()
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"),
                       SEND_BYTES_PER_MINUTE=str(defaults.send_bytes_per_minute),
                       SENDS_PER_MINUTE=str(defaults.sends_per_minute), GRAPH="tests.support.graphs:brief")
    url = cluster.services["gw"].url
    attacker = Device(url, token(new_user()), "attacker")
    await attacker.connect()
    worker_pid = cluster.services["w"].process.pid
    rss_before = rss_bytes(worker_pid)
    largest = defaults.max_text_length
    sent = 0
    async with RedisProbe(cluster.redis_url) as redis_probe, \
            Bystander(url, token(new_user()), probe="turn", interval=0.1) as bystander:
        for n in range(40):  # each to a new conversation, twenty frames a second
            for size in (BIG, largest - 10):
                await asyncio.sleep(0.025)
                await attacker.send_raw(json.dumps({"type": "send", "conversation_id": f"new-{n}-{size}",
                                                    "client_msg_id": f"m-{n}-{size}", "text": f"{n} " + "x" * size}))
                sent += 1
        answered = lambda: sum(f["type"] in ("accepted", "error") for f in attacker.frames) == sent  # noqa: E731
        await attacker.wait_for(answered, timeout=60)
        accepted = [f["client_msg_id"] for f in attacker.frames if f["type"] == "accepted"]
        await attacker.wait_for(lambda: all(attacker.replies(c) for c in accepted), timeout=60)
    rss_after = rss_bytes(worker_pid)
    slowest = max((entry["duration"] for entry in await redis_client.slowlog_get(128)), default=0) / 1000
    codes = [f["code"] for f in attacker.frames if f["type"] == "error"]
    print(f"accepted {len(accepted)}, refused {len(codes)}; worker RSS {rss_before / 2**20:.0f} -> "
          f"{rss_after / 2**20:.0f} MiB; slowest Redis command {slowest:.1f} ms")
    redis_probe.check()
    bystander.check()
    assert codes.count("text_too_long") == 40
    # The minute's byte allowance (4 MiB) passed, the rest was refused with
    # the time to wait; each accepted message got its turn.
    assert 30 <= len(accepted) <= defaults.send_bytes_per_minute // largest + 1
    assert codes.count("rate_limited") == 40 - len(accepted)
    assert rss_after - rss_before < 100 * 2**20
    await attacker.close()


async def test_repeated_sends_cost_one_script_each_and_no_work(cluster, redis_client):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"))  # no worker yet: the backlog stays
    url = cluster.services["gw"].url
    user = new_user()
    store = GatewayStore(redis_client, StreamSettings())
    for c in range(100):  # a backlog of 2,000 messages waiting
        await store.accept_many(user, "loader", f"c{c}", [(f"c{c}-m{i}", f"backlog {i}") for i in range(20)])
    phone = Device(url, token(user), "phone")
    await phone.connect()
    await phone.send("c0", "c0-m0", "backlog 0")  # one repeat first: the lost-notice safety net's
    await phone.wait_frame("accepted", client_msg_id="c0-m0")
    notices_before = await redis_client.xlen(keys.work(0))
    await redis_client.config_resetstat()
    async with Bystander(url, token(new_user()), probe="ping") as bystander:
        for _ in range(200):
            await phone.send("c0", "c0-m0", "backlog 0")
        await phone.wait_for(lambda: sum(f["type"] == "accepted" for f in phone.frames) == 201)
    stats = await redis_client.info("commandstats")
    bystander.check()
    assert await redis_client.xlen(keys.work(0)) == notices_before  # within RENOTICE_INTERVAL: none
    # One accept script each (it alone asks Redis for the TIME), and nothing
    # appended anywhere: no notice, no inbound entry, no event.
    assert stats["cmdstat_time"]["calls"] == 200
    assert "cmdstat_xadd" not in stats
    assert "repeated send" not in cluster.services["gw"].log_text()  # not logged at INFO either
    # The backlog is intact and runs once each when a worker comes.
    cluster.start("worker", "w")
    reply = await phone.wait_reply("c0-m0", timeout=60)
    assert reply["text"].startswith("Turn 1.")
    assert len(phone.replies("c0-m0")) == 1
    await phone.close()
