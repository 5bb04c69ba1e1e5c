"""Replay and live events meet without a gap or a duplicate, even while
events are appended every few milliseconds during the reconnects."""

from __future__ import annotations

import asyncio
import random
import uuid

import redis.asyncio as aioredis

from switchboard.shared import keys
from tests.support.client import Device
from tests.support.cluster import token


async def test_reconnecting_during_a_burst_of_appends_loses_and_repeats_nothing(cluster):
    cluster.start("fanout")
    cluster.start("gateway", "gw-a")
    cluster.start("gateway", "gw-b")
    urls = [cluster.services["gw-a"].url, cluster.services["gw-b"].url]
    user = f"user-{uuid.uuid4().hex[:8]}"
    writer = Device(urls[0], token(user), "writer")
    reader = Device(urls[1], token(user), "reader")
    await writer.connect()
    await reader.connect()
    rng = random.Random(7)
    total = 400

    async def write() -> None:
        for i in range(total):
            await writer.send("c", f"m{i}", f"message {i}")
            await asyncio.sleep(0.003)

    async def reconnect_repeatedly() -> int:
        count = 0
        while not writing.done():
            await asyncio.sleep(rng.uniform(0.05, 0.2))
            if rng.random() < 0.5:
                await reader.drop()
            else:
                await reader.close()
            # The position is what the device processed before the socket ended.
            last = reader.event_ids()[-1] if reader.events else None
            welcome = await reader.connect(last_id=last, epoch=reader.welcome["epoch"], url=rng.choice(urls))
            if last is not None:
                assert welcome["recovered"] is True and welcome["resume_from"] == last
            count += 1
        return count

    writing = asyncio.create_task(write())
    reconnects = await reconnect_repeatedly()
    await writing
    await writer.wait_for(lambda: len([f for f in writer.frames if f["type"] == "accepted"]) == total)

    # A last message after the burst: once both devices have it, anything
    # missing or repeated would have shown before it.
    await writer.send("c", "last", "the last one")
    for device in (reader, writer):
        await device.wait_for(lambda d=device: any(e["client_msg_id"] == "last" for e in d.events), timeout=20)
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    stream_ids = [entry_id for entry_id, _ in await client.xrange(keys.outbound(user))]
    await client.aclose()
    assert len(stream_ids) == total + 1
    assert reconnects >= 5
    assert reader.event_ids() == stream_ids  # every event once, in stream order
    assert writer.event_ids() == stream_ids
    await reader.close()
    await writer.close()


async def test_two_devices_one_reconnecting_repeatedly_end_with_equal_logs(cluster):
    cluster.start_many(("fanout", "f1"), ("fanout", "f2"), ("worker", "w"), ("gateway", "gw-a"), ("gateway", "gw-b"))
    urls = [cluster.services["gw-a"].url, cluster.services["gw-b"].url]
    user = f"user-{uuid.uuid4().hex[:8]}"
    steady = Device(urls[0], token(user), "steady")
    flaky = Device(urls[1], token(user), "flaky")
    await steady.connect()
    await flaky.connect()
    rng = random.Random(11)
    for i in range(30):
        sender = steady if i % 3 else flaky
        if sender is flaky and flaky._reader is not None and flaky._reader.done():
            sender = steady
        await sender.send("c", f"m{i}", f"message {i}")
        await sender.wait_frame("accepted", client_msg_id=f"m{i}")  # before the socket may go
        if rng.random() < 0.4:
            await flaky.drop()
            await flaky.connect(last_id=flaky.event_ids()[-1] if flaky.events else None,
                                epoch=flaky.welcome["epoch"], url=rng.choice(urls))
        await asyncio.sleep(rng.uniform(0, 0.05))
    for i in range(30):
        await steady.wait_reply(f"m{i}")
        await flaky.wait_reply(f"m{i}")
    # A last message: once both have its reply, each has had the whole stream.
    await steady.send("c", "last", "the last one")
    await steady.wait_reply("last")
    await flaky.wait_reply("last")
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    stream_ids = [entry_id for entry_id, _ in await client.xrange(keys.outbound(user))]
    await client.aclose()
    assert len(stream_ids) == 62
    assert steady.event_ids() == stream_ids
    assert flaky.event_ids() == stream_ids
    await steady.close()
    await flaky.close()
