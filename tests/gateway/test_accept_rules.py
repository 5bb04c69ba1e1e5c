"""The accept script's rules against a real Redis: when a work notice is
sent, and every quota (each refuses before anything is written)."""

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from switchboard.gateway.store import GatewayStore, OverLimit
from switchboard.shared import keys
from switchboard.shared.fields import ConvField
from switchboard.shared.settings import QuotaSettings, StreamSettings

OFF = QuotaSettings.unlimited()


@pytest.fixture
async def client(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def make(client, **quotas) -> GatewayStore:
    return GatewayStore(client, StreamSettings(work_shards=1), QuotaSettings(**{**vars(OFF), **quotas}))


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


async def notices(client, u: str) -> int:
    return sum(1 for _, f in await client.xrange(keys.work(0)) if f.get("user") == u)


async def answer(client, u: str, conv: str, entry_id: str) -> None:
    """What a worker's commit does to the keys accept reads."""
    await client.hset(keys.conversation(u, conv), ConvField.DONE, entry_id)
    await client.xtrim(keys.inbound(u, conv), minid=f"{entry_id.split('-')[0]}-{int(entry_id.split('-')[1]) + 1}")
    await client.hincrby(keys.usage(u), "waiting", -1)


async def test_a_notice_only_when_the_conversation_had_nothing_waiting(client):
    store, u = make(client), user()
    first = await store.accept(u, "d", "c", "m1", "one")
    await store.accept(u, "d", "c", "m2", "two")  # m1 waits: its notice covers m2
    await store.accept(u, "d", "other", "o1", "elsewhere")  # another conversation: its own
    assert await notices(client, u) == 2
    await answer(client, u, "c", first.id)
    await store.accept(u, "d", "c", "m3", "three")  # m2 still waits
    assert await notices(client, u) == 2


async def test_a_conversation_answered_up_to_date_gets_a_notice_for_its_next_message(client):
    store, u = make(client), user()
    first = await store.accept(u, "d", "c", "m1", "one")
    await answer(client, u, "c", first.id)
    await store.accept(u, "d", "c", "m2", "two")
    assert await notices(client, u) == 2


async def test_repeats_cost_no_notice_beyond_one_per_renotice_interval(client):
    store, u = make(client, renotice_interval=0.3), user()
    first = await store.accept(u, "d", "c", "m1", "one")
    for _ in range(50):
        again = await store.accept(u, "d", "c", "m1", "one")
        assert again == (first.id, False)
    # The first repeat may mean the first notice was lost: one more, no more.
    assert await notices(client, u) == 2
    await asyncio.sleep(0.35)
    await store.accept(u, "d", "c", "m1", "one")
    assert await notices(client, u) == 3


async def test_no_renotice_while_a_drain_holds_the_conversation_or_once_answered(client):
    store, u = make(client, renotice_interval=0.1), user()
    first = await store.accept(u, "d", "c", "m1", "one")
    await client.set(keys.lease(u, "c"), "worker-token", px=5000)
    await store.accept(u, "d", "c", "m1", "one")
    assert await notices(client, u) == 1  # the drain under way takes it
    await client.delete(keys.lease(u, "c"))
    await answer(client, u, "c", first.id)
    await asyncio.sleep(0.15)
    await store.accept(u, "d", "c", "m1", "one")
    assert await notices(client, u) == 1  # answered: nothing to do


async def test_answered_entries_leave_the_inbound_stream_and_ids_stay_per_conversation(client):
    store, u = make(client), user()
    a = await store.accept(u, "d", "a", "a1", "in a")
    b = await store.accept(u, "d", "b", "b1", "in b")
    assert [e for e, _ in await client.xrange(keys.inbound(u, "a"))] == [a.id]
    assert [e for e, _ in await client.xrange(keys.inbound(u, "b"))] == [b.id]
    fields = (await client.xrange(keys.inbound(u, "a")))[0][1]
    assert fields["text"] == "in a" and fields["cmid"] == "a1" and "conv" not in fields


async def test_sends_per_minute_refuse_with_a_retry_time_and_write_nothing(client):
    store, u = make(client, sends_per_minute=5), user()
    for i in range(5):  # a burst of the whole minute's allowance
        await store.accept(u, "d", "c", f"m{i}", "x")
    out_before = await client.xlen(keys.outbound(u))
    with pytest.raises(OverLimit) as refused:
        await store.accept(u, "d", "c", "m5", "x")
    assert refused.value.code == "rate_limited"
    assert 0 < refused.value.retry_after_ms <= 12_000  # one send per 12 s
    assert await client.xlen(keys.outbound(u)) == out_before
    assert await client.xlen(keys.inbound(u, "c")) == 5
    assert await client.get(keys.dedup(u, "m5")) is None
    # A repeat of an accepted message is not a send: it always answers.
    assert (await store.accept(u, "d", "c", "m0", "x")).fresh is False


async def test_the_send_rate_refills_at_its_average(client):
    store, u = make(client, sends_per_minute=60), user()  # one per second, bursts of 60
    for i in range(60):
        await store.accept(u, "d", "c", f"m{i}", "x")
    with pytest.raises(OverLimit) as refused:
        await store.accept(u, "d", "c", "late", "x")
    wait_ms = refused.value.retry_after_ms
    assert 0 < wait_ms <= 1000
    await asyncio.sleep(wait_ms / 1000 + 0.05)
    await store.accept(u, "d", "c", "late", "x")  # refilled by exactly one
    with pytest.raises(OverLimit):
        await store.accept(u, "d", "c", "later", "x")


async def test_text_bytes_per_minute(client):
    store, u = make(client, send_bytes_per_minute=10_000), user()
    await store.accept(u, "d", "c", "m1", "x" * 6_000)
    await store.accept(u, "d", "c", "m2", "x" * 4_000)  # the minute's burst, used up
    with pytest.raises(OverLimit) as refused:
        await store.accept(u, "d", "c", "m3", "x" * 1_000)  # 1,000 bytes refill in 6 s
    assert refused.value.code == "rate_limited" and 5_000 < refused.value.retry_after_ms <= 6_000
    with pytest.raises(OverLimit) as never:
        await store.accept(u, "d", "c", "m4", "x" * 10_001)  # more than a minute's: never
    assert never.value.retry_after_ms == 0
    assert await client.xlen(keys.inbound(u, "c")) == 2


async def test_conversations_per_user(client):
    store, u = make(client, max_conversations=2), user()
    await store.accept(u, "d", "a", "a1", "x")
    await store.accept(u, "d", "b", "b1", "x")
    with pytest.raises(OverLimit) as refused:
        await store.accept(u, "d", "c", "c1", "x")
    assert refused.value.code == "too_many_conversations" and refused.value.retry_after_ms == 0
    await store.accept(u, "d", "a", "a2", "existing conversations go on")
    assert await client.zcard(keys.conversations(u)) == 2


async def test_conversations_idle_past_retention_no_longer_count(client):
    retention_s = 0.6
    store = GatewayStore(client, StreamSettings(work_shards=1, retention=retention_s / 60),
                         QuotaSettings(**{**vars(OFF), "max_conversations": 2}))
    u = user()
    await store.accept(u, "d", "a", "a1", "x")
    await store.accept(u, "d", "b", "b1", "x")
    await asyncio.sleep(retention_s / 2)
    await store.accept(u, "d", "b", "b2", "b is still in use")
    with pytest.raises(OverLimit):
        await store.accept(u, "d", "c", "c1", "x")
    await asyncio.sleep(retention_s / 2 + 0.1)  # a: idle past retention; b: not
    await store.accept(u, "d", "c", "c1", "x")
    assert set(await client.zrange(keys.conversations(u), 0, -1)) == {"b", "c"}
    with pytest.raises(OverLimit):
        await store.accept(u, "d", "d", "d1", "x")


async def test_messages_per_conversation(client):
    store, u = make(client, max_messages=3), user()
    for i in range(3):
        entry = await store.accept(u, "d", "c", f"m{i}", "x")
        await answer(client, u, "c", entry.id)
    with pytest.raises(OverLimit) as refused:
        await store.accept(u, "d", "c", "m3", "x")
    assert refused.value.code == "conversation_full"
    await store.accept(u, "d", "other", "o1", "another conversation is fine")


async def test_waiting_messages_per_user_and_the_recount_that_heals_a_drifted_counter(client):
    store, u = make(client, max_waiting=3), user()
    first = await store.accept(u, "d", "a", "a1", "x")
    await store.accept(u, "d", "b", "b1", "x")
    await store.accept(u, "d", "b", "b2", "x")
    with pytest.raises(OverLimit) as refused:
        await store.accept(u, "d", "c", "c1", "x")
    assert refused.value.code == "backlog_full"
    await answer(client, u, "a", first.id)
    await store.accept(u, "d", "c", "c1", "one answered: one more may wait")
    # A counter that drifted up (keys restored or deleted by hand) is
    # recounted from the streams before it refuses anyone.
    await client.hset(keys.usage(u), "waiting", 1000)
    await client.delete(keys.inbound(u, "b"))
    await store.accept(u, "d", "c", "c2", "accepted after the recount")
    assert int(await client.hget(keys.usage(u), "waiting")) == 2  # c1 and c2; a answered, b gone
