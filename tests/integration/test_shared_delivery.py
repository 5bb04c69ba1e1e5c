"""Several devices of one user on one gateway share each delivery (one
message per gateway, each event encoded once): every device still gets
exactly the events after its own position, in order, once -- live, while
others replay, and in bursts larger than the writer's batches and the
outbox."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from switchboard.gateway.store import GatewayStore
from switchboard.shared import keys
from switchboard.shared.settings import StreamSettings
from tests.support.client import Device
from tests.support.cluster import token


async def _stream_ids(client: aioredis.Redis, user: str) -> list[str]:
    return [entry_id for entry_id, _ in await client.xrange(keys.outbound(user))]


@pytest.mark.parametrize("outbox", ["1024", "16"])  # 16: every batch pauses the connection
async def test_devices_at_different_positions_each_get_exactly_their_events(cluster, outbox):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), OUTBOUND_MAXLEN="100000", OUTBOX_SIZE=outbox)
    url = cluster.services["gw"].url
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    store = GatewayStore(client, StreamSettings(outbound_maxlen=100_000))
    user = f"u-{uuid.uuid4().hex[:8]}"
    live = [Device(url, token(user), f"live{i}") for i in range(3)]
    for device in live:
        await device.connect()
    epoch = live[0].welcome["epoch"]
    # More events than one write batch, one fanout read and one outbox hold,
    # appended in bursts while the devices are attached.
    for first in range(0, 1200, 200):
        await store.accept_many(user, "bench", "c", [(f"m{i}", f"event {i}") for i in range(first, first + 200)])
    ids = await _stream_ids(client, user)
    # Late devices join mid-stream and from the start, while appends go on.
    late = Device(url, token(user), "late")
    await late.connect(last_id=ids[599], epoch=epoch)
    early = Device(url, token(user), "early")
    await early.connect(last_id=ids[0], epoch=epoch)
    await store.accept_many(user, "bench", "c", [(f"n{i}", f"more {i}") for i in range(300)])
    ids = await _stream_ids(client, user)
    assert len(ids) == 1500
    for device in live:
        await device.wait_for(lambda d=device: len(d.events) >= 1500, timeout=30)
    await late.wait_for(lambda: len(late.events) >= 900, timeout=30)
    await early.wait_for(lambda: len(early.events) >= 1499, timeout=30)
    # A last event: once every device has it, anything repeated or missing
    # would have come before it.
    await store.accept(user, "bench", "c", "last", "the last event")
    ids = await _stream_ids(client, user)
    assert len(ids) == 1501
    for device in [*live, late, early]:
        await device.wait_for(lambda d=device: d.events and d.events[-1]["id"] == ids[-1], timeout=30)
    for device in live:
        assert device.event_ids() == ids
    assert late.event_ids() == ids[600:]
    assert early.event_ids() == ids[1:]
    for device in [*live, late, early]:
        assert device.close_code is None  # nobody was closed as a slow consumer
        await device.close()
    await client.aclose()
