"""Resume edge cases over real sockets: `recovered` is false exactly when
events could be missing, and the replay is exact otherwise."""

from __future__ import annotations

import signal
import uuid

import pytest
import redis.asyncio as aioredis

from switchboard.gateway.store import GatewayStore
from switchboard.shared import keys
from switchboard.shared.settings import StreamSettings
from tests.support.client import Device
from tests.support.cluster import token

RETENTION = 50


@pytest.fixture
async def setup(cluster):
    env = {"OUTBOUND_MAXLEN": str(RETENTION), "REPLAY_WINDOW": "5"}
    cluster.start_many(("fanout", "f"), ("gateway", "gw-1"), ("gateway", "gw-2"), **env)
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    store = GatewayStore(client, StreamSettings(outbound_maxlen=RETENTION))
    yield cluster, store
    await client.aclose()


async def _fill(store: GatewayStore, user: str, count: int, start: int = 0) -> list[str]:
    """Append `count` user events the fast way (the gateway's own accept script)."""
    for i in range(start, start + count):
        await store.accept(user, "filler", "c", f"m{i}", f"event {i}")
    return [entry_id for entry_id, _ in await store.redis.xrange(keys.outbound(user))]


async def _stream_ids(store: GatewayStore, user: str, after: str | None = None) -> list[str]:
    """The user's outbound stream in Redis (the entries after ``after``)."""
    return [entry_id for entry_id, _ in await store.redis.xrange(keys.outbound(user), f"({after}" if after else "-")]


def _events(device: Device) -> list[str]:
    return [f["id"] for f in device.frames if f["type"] == "event"]


async def _gets_exactly(device: Device, store: GatewayStore, user: str, expected: list[str]) -> None:
    """The device's connection is sent exactly ``expected`` (ids read from
    Redis), and then nothing but an event appended now: once that last event
    is in, anything extra would have come before it."""
    await device.wait_for(lambda: len(_events(device)) >= len(expected))
    last = f"last-{uuid.uuid4().hex[:8]}"
    await store.accept(user, "filler", "c", last, "the last event")
    newest = (await store.redis.xrevrange(keys.outbound(user), count=1))[0][0]
    await device.wait_for(lambda: any(f.get("client_msg_id") == last for f in device.frames))
    assert _events(device) == expected + [newest]


async def test_last_id_cases(setup):
    cluster, store = setup
    user = f"u-{uuid.uuid4().hex[:8]}"
    url = cluster.services["gw-1"].url
    ids = await _fill(store, user, 30)
    probe = Device(url, token(user), "probe")
    epoch = (await probe.connect())["epoch"]
    await probe.close()

    # Equal to the newest id: recovered, nothing replayed, live continues.
    d = Device(url, token(user), "d1")
    w = await d.connect(last_id=ids[-1], epoch=epoch)
    assert (w["recovered"], w["resume_from"]) == (True, ids[-1])
    await _gets_exactly(d, store, user, [])
    await d.close()

    # Within retention: exactly the events after it.
    d = Device(url, token(user), "d2")
    w = await d.connect(last_id=ids[20], epoch=epoch)
    assert w["recovered"] is True
    after = await _stream_ids(store, user, ids[20])
    assert after[:-1] == ids[21:] and len(after) == 10  # ... and the live event d1 got
    await _gets_exactly(d, store, user, after)
    await d.close()

    # From the future (ids this stream never had): not recovered.
    d = Device(url, token(user), "d3")
    w = await d.connect(last_id="99999999999999-0", epoch=epoch)
    assert w["recovered"] is False
    await d.close()

    # Wrong epoch: not recovered; the device gets the replay window.
    d = Device(url, token(user), "d4")
    w = await d.connect(last_id=ids[20], epoch="not-the-epoch")
    assert w["recovered"] is False
    stream = await _stream_ids(store, user)
    assert w["resume_from"] == stream[-6]
    await _gets_exactly(d, store, user, stream[-5:])
    await d.close()

    # Older than retention: not recovered; replay of all that is retained.
    ids = await _fill(store, user, 60, start=100)
    d = Device(url, token(user), "d5")
    w = await d.connect(last_id="1-0", epoch=epoch)  # long trimmed
    assert w["recovered"] is False
    retained = await _stream_ids(store, user)
    assert w["resume_from"] == await store.redis.hget(keys.meta(user), "trimmed")
    await _gets_exactly(d, store, user, retained)
    await d.close()


async def test_a_lost_outbound_stream_is_reported_not_hidden(setup):
    cluster, store = setup
    user = f"u-{uuid.uuid4().hex[:8]}"
    url = cluster.services["gw-1"].url
    ids = await _fill(store, user, 10)
    d = Device(url, token(user), "phone")
    w = await d.connect(last_id=ids[5], epoch=None)
    assert w["recovered"] is False  # no epoch: cannot be proven
    await d.close()
    d = Device(url, token(user), "phone")
    epoch = (await d.connect(last_id=ids[5], epoch=(await _epoch(store, user))))["epoch"]
    assert d.welcome["recovered"] is True
    await d.close()

    await store.redis.delete(keys.outbound(user))  # Redis lost the stream
    await _fill(store, user, 3, start=50)
    w = await d.connect(last_id=ids[-1], epoch=epoch)
    assert w["recovered"] is False and w["epoch"] != epoch
    stream = await _stream_ids(store, user)
    assert len(stream) == 3
    await _gets_exactly(d, store, user, stream)
    await d.close()


async def _epoch(store: GatewayStore, user: str) -> str:
    return await store.redis.hget(keys.meta(user), "epoch")


async def test_a_gateway_killed_mid_replay_the_device_completes_elsewhere(setup):
    cluster, store = setup
    # A bigger retention for this one: 3000 events to replay.
    client = store.redis
    big = GatewayStore(client, StreamSettings(outbound_maxlen=100_000))
    user = f"u-{uuid.uuid4().hex[:8]}"
    for i in range(3000):
        await big.accept(user, "filler", "c", f"m{i}", f"event {i} " + "x" * 200)
    ids = [entry_id for entry_id, _ in await client.xrange(keys.outbound(user))]
    assert len(ids) == 3000
    epoch = await _epoch(store, user)
    # Gateways trim to OUTBOUND_MAXLEN only on writes; no writes happen meanwhile.
    d = Device(cluster.services["gw-1"].url, token(user), "tablet")
    await d.connect(last_id=ids[0], epoch=epoch)
    await d.wait_for(lambda: len(d.events) >= 200)
    cluster.kill("gw-1", signal.SIGKILL)
    await d.wait_for(lambda: d._reader is not None and d._reader.done())
    got = len(d.events)
    assert 200 <= got < 2999, "the replay should have been cut in the middle"
    await d.connect(last_id=d.event_ids()[-1], epoch=epoch, url=cluster.services["gw-2"].url)
    assert d.welcome["recovered"] is True
    await d.wait_for(lambda: len(d.events) >= 2999, timeout=30)
    # A last event (appended without trimming): once it is in, the device
    # has had every event after ids[0] once, over both connections.
    await big.accept(user, "filler", "c", "last", "the last event")
    [last] = await _stream_ids(big, user, ids[-1])
    await d.wait_for(lambda: d.event_ids()[-1] == last, timeout=30)
    assert d.event_ids() == ids[1:] + [last]
    await d.close()
