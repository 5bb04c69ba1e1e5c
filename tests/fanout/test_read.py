"""The fanout's read script against a real Redis: events after a cursor and
the trim mark, from one snapshot."""

import uuid

import redis.asyncio as aioredis

from switchboard.fanout.read import OutboundReader, parse
from switchboard.gateway.store import GatewayStore
from switchboard.shared import keys, streamids
from switchboard.shared.settings import StreamSettings


async def _read(client: aioredis.Redis, user: str, after: str, count: int, max_bytes: int = 1 << 20):
    (raw,) = await OutboundReader(client).read([(user, after)], count, max_bytes)
    reply = parse(raw)
    return reply.events, reply.trimmed


async def test_reads_events_after_the_cursor_with_the_trim_mark(redis_url):
    text = aioredis.Redis.from_url(redis_url, decode_responses=True)
    raw = aioredis.Redis.from_url(redis_url)
    store = GatewayStore(text, StreamSettings(outbound_maxlen=16, work_shards=1))
    user = f"u-{uuid.uuid4().hex[:8]}"
    assert await _read(raw, user, "0-0", 10) == ([], "0-0")  # nothing yet
    await store.accept_many(user, "phone", "c", [("m0", "héllo"), ("m1", "second")])
    ids = [entry_id for entry_id, _ in await text.xrange(keys.outbound(user))]
    events, trimmed = await _read(raw, user, "0-0", 10)
    assert trimmed == "0-0" and [e.id for e in events] == ids
    first = events[0]
    assert (first.kind, first.conversation_id, first.text, first.client_msg_id, first.device_id) == (
        "user", "c", "héllo", "m0", "phone")
    events, _ = await _read(raw, user, ids[0], 10)  # the cursor itself is excluded
    assert [e.id for e in events] == ids[1:]
    await store.accept_many(user, "phone", "c", [(f"n{i}", "more") for i in range(30)])
    events, trimmed = await _read(raw, user, "0-0", 5)
    assert trimmed == await text.hget(keys.meta(user), "trimmed") != "0-0"
    assert len(events) == 5 and streamids.later(events[0].id, trimmed)  # retained events only
    await text.delete(keys.work(0))
    await text.aclose()
    await raw.aclose()


async def test_the_fanout_reloads_its_script_after_redis_forgets_it(redis_url):
    """Reads go by SHA (no SCRIPT EXISTS per delivery); after a restart or a
    flush Redis answers NOSCRIPT, and the fanout loads the script again."""
    from switchboard.fanout.service import Fanout
    from switchboard.shared.settings import FanoutSettings, RedisSettings

    text = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = GatewayStore(text, StreamSettings(work_shards=1))
    user = f"u-{uuid.uuid4().hex[:8]}"
    await store.accept_many(user, "phone", "c", [("m0", "hello")])
    fanout = Fanout(FanoutSettings(redis=RedisSettings(url=redis_url)))
    try:
        await text.script_flush()
        (reply,) = await fanout.reader.read([(user, "0-0")], 10, 1 << 20)
        events = parse(reply).events
        assert [e.text for e in events] == ["hello"]
    finally:
        await fanout.raw.aclose()
        await fanout.redis.aclose()
        await text.delete(keys.work(0))
        await text.aclose()


async def test_live_events_are_delivered_from_their_notices_exactly(redis_url):
    """While a connection keeps up, each append's notice carries the event and
    the id before it, and the fanout delivers it without reading the stream;
    a missed notice falls back to a read. Either way the batches continue
    exactly (each ``prev`` is the previous batch's last id)."""
    import asyncio

    from switchboard.fanout.service import Fanout
    from switchboard.shared import internal
    from switchboard.shared.settings import FanoutSettings, RedisSettings

    text = aioredis.Redis.from_url(redis_url, decode_responses=True)
    raw = aioredis.Redis.from_url(redis_url)
    store = GatewayStore(text, StreamSettings(work_shards=1))
    user = f"u-{uuid.uuid4().hex[:8]}"
    await store.accept_many(user, "phone", "c", [("m0", "before attach")])
    fanout = Fanout(FanoutSettings(redis=RedisSettings(url=redis_url), server_id=f"f-{user}", sweep_interval=60))
    serving = asyncio.create_task(fanout.serve())
    gateway = raw.pubsub()
    await gateway.subscribe(keys.gateway_delivery("gw-test"))
    try:
        await asyncio.wait_for(fanout.ready.wait(), 10)
        await raw.publish(keys.fanout_control(fanout.id),
                          internal.encode(internal.Attach(gateway="gw-test", conn="k1", user=user, cursor="0-0")))
        received: list[tuple[str, list[str]]] = []

        async def collect(count: int) -> None:
            while sum(len(events) for _, events in received) < count:
                message = await gateway.get_message(ignore_subscribe_messages=True, timeout=5)
                if message is not None:
                    delivery = internal.decode_delivery(message["data"])
                    received.append((delivery.targets[0].prev, [e.id for e in delivery.events]))

        await asyncio.wait_for(collect(1), 10)  # the attach reads what was there
        assert fanout.counts["reads"] >= 1
        for i in range(20):
            await store.accept(user, "phone", "c", f"live{i}", f"live {i}")
            await asyncio.wait_for(collect(2 + i), 10)
        assert fanout.counts["direct"] >= 15, fanout.counts  # live events came from their notices

        ids = [entry_id for entry_id, _ in await text.xrange(keys.outbound(user))]
        reads_before = fanout.counts["reads"]
        # An entry whose notice never came: the next notice does not continue the cursor.
        skipped = await text.xadd(keys.outbound(user), {"kind": "user", "conv": "c", "text": "no notice"})
        await store.accept(user, "phone", "c", "after-gap", "after the gap")
        await asyncio.wait_for(collect(len(ids) + 2), 10)
        assert fanout.counts["reads"] > reads_before  # the chain was broken: the stream was read

        delivered = [entry_id for _, events in received for entry_id in events]
        stream = [entry_id for entry_id, _ in await text.xrange(keys.outbound(user))]
        assert delivered == stream and skipped in delivered  # everything, once, in order
        previous = "0-0"
        for prev, events in received:
            assert prev == previous
            previous = events[-1]
    finally:
        fanout.stopping.set()
        await asyncio.wait_for(serving, 10)
        await gateway.aclose()
        await text.delete(keys.work(0))
        await text.aclose()
        await raw.aclose()


async def test_a_read_stops_at_its_byte_budget_after_at_least_one_event(redis_url):
    """500 events of 1 MiB in one reply would cost everyone half a gigabyte:
    the script stops at the byte budget, says it was cut, and an event larger
    than the budget still goes, alone."""
    text = aioredis.Redis.from_url(redis_url, decode_responses=True)
    raw = aioredis.Redis.from_url(redis_url)
    store = GatewayStore(text, StreamSettings(work_shards=1))
    user = f"u-{uuid.uuid4().hex[:8]}"
    reader = OutboundReader(raw)
    await store.accept_many(user, "phone", "c", [(f"m{i}", "x" * 1000) for i in range(10)])
    ids = [entry_id for entry_id, _ in await text.xrange(keys.outbound(user))]

    (reply,) = await reader.read([(user, "0-0")], 100, 3500)
    first = parse(reply)
    assert [e.id for e in first.events] == ids[:3] and first.cut  # 3 x ~1.1 kB fit, the 4th does not
    (reply,) = await reader.read([(user, ids[2])], 100, 3500)
    assert [e.id for e in parse(reply).events] == ids[3:6]  # reading on continues exactly
    (reply,) = await reader.read([(user, "0-0")], 100, 10)
    alone = parse(reply)
    assert [e.id for e in alone.events] == ids[:1] and alone.cut  # larger than the budget: alone
    (reply,) = await reader.read([(user, ids[6])], 100, 1 << 20)
    rest = parse(reply)
    assert [e.id for e in rest.events] == ids[7:] and not rest.cut  # the end of the stream is no cut
    (reply,) = await reader.read([(user, "0-0")], 4, 1 << 20)
    by_count = parse(reply)
    assert len(by_count.events) == 4 and not by_count.cut  # the count bound is the caller's to see
    await text.delete(keys.work(0))
    await text.aclose()
    await raw.aclose()
