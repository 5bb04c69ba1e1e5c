"""The fanout's read script against a real Redis: events after a cursor and
the trim mark, from one snapshot."""

import uuid

import redis.asyncio as aioredis

from switchboard.fanout.read import OutboundReader, parse
from switchboard.gateway.store import GatewayStore
from switchboard.shared import keys, streamids
from switchboard.shared.settings import StreamSettings


async def _read(client: aioredis.Redis, user: str, after: str, count: int):
    (reply,) = await OutboundReader(client).read([(user, after)], count)
    return parse(reply)


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
        (reply,) = await fanout.reader.read([(user, "0-0")], 10)
        events, _ = parse(reply)
        assert [e.text for e in events] == ["hello"]
    finally:
        await fanout.raw.aclose()
        await fanout.redis.aclose()
        await text.delete(keys.work(0))
        await text.aclose()
