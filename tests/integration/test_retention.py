"""Retention: every key of an idle user and of an idle conversation goes,
and nothing that waits for an answer does. Real processes, real Redis, a
retention (CHECKPOINT_TTL) of three seconds."""

from __future__ import annotations

import asyncio
import signal

import redis.asyncio as aioredis

from switchboard.shared import keys
from switchboard.shared.fields import EventField
from tests.support.client import Device, new_user
from tests.support.cluster import token

RETENTION_S = 3.0
ENV = dict(CHECKPOINT_TTL=str(RETENTION_S / 60), DEDUP_TTL="3")


async def _user_keys(client: aioredis.Redis, user: str) -> dict[str, int]:
    """Every key of the user (checkpoints included: their thread ids carry the
    user's hash tag) -> its PTTL in ms (-1: no expiry)."""
    found = [key async for key in client.scan_iter(match=f"*{{u:{user}}}*", count=1000)]
    ttls = {key: await client.pttl(key) for key in found}
    return {key: ttl for key, ttl in ttls.items() if ttl != -2}  # -2: gone since the scan


async def test_an_idle_users_keys_and_checkpoints_all_expire(cluster, redis_client):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), **ENV)
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    for conversation, cmid in (("c1", "m1"), ("c1", "m2"), ("c2", "m3")):
        await phone.send(conversation, cmid, f"hello {cmid}")
        reply = await phone.wait_reply(cmid)
        await phone.ack(reply["id"])
    await phone.wait_for(lambda: phone.frames and phone.frames[-1].get("type") != "error")
    await phone.close()

    kinds = {"out": keys.outbound(user), "meta": keys.meta(user), "usage": keys.usage(user),
             "index": keys.conversations(user), "offsets": keys.offsets(user),
             "conv": keys.conversation(user, "c1"), "inbound": keys.inbound(user, "c1")}
    ttls = await _user_keys(redis_client, user)
    for name, key in kinds.items():
        assert key in ttls, f"{name} ({key}) was not written"
    assert not [k for k, ttl in ttls.items() if ttl < 0], f"keys that never expire: {ttls}"
    assert any(k.startswith("checkpoint") for k in ttls), ttls
    # An answered conversation ages for `retention`; the user's keys for up to 1.5 x.
    assert 0 < ttls[kinds["conv"]] <= RETENTION_S * 1000
    assert RETENTION_S * 1000 < ttls[kinds["out"]] <= RETENTION_S * 1500

    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETENTION_S * 1.5 + 5
    while ttls := await _user_keys(redis_client, user):
        assert loop.time() < deadline, f"left after {RETENTION_S * 1.5 + 5} s idle: {ttls}"
        await asyncio.sleep(0.25)


async def test_a_message_waiting_longer_than_retention_is_kept_and_answered(cluster, redis_client):
    """The conversation had been answered (its keys were ageing) when a new
    message came and no worker was running to answer it."""
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w1"), **ENV)
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m0", "first")
    await phone.wait_reply("m0")
    assert cluster.kill("w1", signal.SIGTERM)
    await phone.send("c", "m1", "anyone there?")
    await phone.wait_frame("accepted", client_msg_id="m1")
    await phone.close()
    await asyncio.sleep(RETENTION_S * 1.5 + 1)  # the user's own keys have gone by now
    conv, inbound = keys.conversation(user, "c"), keys.inbound(user, "c")
    assert await redis_client.pttl(conv) == -1 and await redis_client.pttl(inbound) == -1
    assert await redis_client.xlen(inbound) == 1

    cluster.start("worker", "w2", **ENV)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        events = [f for _, f in await redis_client.xrange(keys.outbound(user))]
        replies = [f for f in events if f[EventField.KIND] == "assistant" and f[EventField.CMID] == "m1"]
        if replies:
            break
        assert loop.time() < deadline, f"no reply to the waiting message: {events}"
        await asyncio.sleep(0.1)
    assert len(replies) == 1
    assert await redis_client.xlen(inbound) == 0
    assert 0 < await redis_client.pttl(conv) <= RETENTION_S * 1000  # answered: it ages now
    assert 0 < await redis_client.pttl(keys.outbound(user))  # the new life of the stream ages too
