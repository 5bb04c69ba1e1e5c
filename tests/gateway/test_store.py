"""The gateway's Lua scripts against a real Redis."""

import uuid

import pytest
import redis.asyncio as aioredis

from switchboard.gateway.resume import resolve
from switchboard.gateway.store import GatewayStore
from switchboard.shared import keys, streamids
from switchboard.shared.settings import StreamSettings


@pytest.fixture
async def store(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = GatewayStore(client, StreamSettings(outbound_maxlen=16, work_shards=1))
    await store.load()
    yield store
    await client.aclose()


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


async def test_accept_is_idempotent_per_client_msg_id(store):
    u = user()
    first = await store.accept(u, "phone", "c", "m1", "hello")
    again = await store.accept(u, "laptop", "c", "m1", "hello (resent)")
    assert first[0] == again[0] and first[1] is True and again[1] is False
    assert await store.redis.xlen(keys.inbound(u, "c")) == 1
    out = await store.redis.xrange(keys.outbound(u))
    assert len(out) == 1 and out[0][1]["kind"] == "user" and out[0][1]["cmid"] == "m1"
    assert out[0][1]["in"] == first[0]
    await store.redis.delete(keys.work(0))


async def test_trimming_records_the_newest_trimmed_id(store):
    u = user()
    ids = [(await store.accept(u, "d", "c", f"m{i}", f"text {i}"))[0] for i in range(40)]
    out_ids = [entry_id for entry_id, _ in await store.redis.xrange(keys.outbound(u))]
    assert 16 <= len(out_ids) <= 17
    trimmed = await store.redis.hget(keys.meta(u), "trimmed")
    all_out = out_ids  # retained; everything newer than `trimmed` must be here
    assert streamids.later(all_out[0], trimmed)
    state, _ = await store.stream_state(u, "d", window=5)
    assert state.trimmed == trimmed and state.last_id == all_out[-1]
    assert state.window_start == all_out[-6]
    old = resolve(state, last_id="1-0", epoch=state.epoch, stored=None)
    assert old.recovered is False and old.resume_from == trimmed
    # Every message got its own inbound entry (waiting entries are never
    # trimmed), and the retained events are the newest messages' user
    # events, none missing in between.
    assert ids == [entry_id for entry_id, _ in await store.redis.xrange(keys.inbound(u, "c"))]
    assert len(set(ids)) == 40
    retained = await store.redis.xrange(keys.outbound(u))
    assert [fields["in"] for _, fields in retained] == ids[-len(retained):]
    assert [fields["cmid"] for _, fields in retained] == [f"m{i}" for i in range(40 - len(retained), 40)]
    await store.redis.delete(keys.work(0))


async def test_a_lost_stream_comes_back_with_a_new_epoch(store):
    u = user()
    await store.accept(u, "d", "c", "m1", "x")
    before, _ = await store.stream_state(u, "d", window=10)
    await store.redis.delete(keys.outbound(u))  # Redis lost it
    after, _ = await store.stream_state(u, "d", window=10)
    assert after.epoch != before.epoch
    r = resolve(after, last_id=before.last_id, epoch=before.epoch, stored=None)
    assert r.recovered is False
    await store.redis.delete(keys.work(0))


async def test_a_stream_that_survived_its_metadata_starts_a_new_life_with_every_entry_suspect(store):
    u = user()
    first, _ = await store.accept(u, "d", "c", "m1", "x")
    await store.accept(u, "d", "c", "m2", "y")
    before, _ = await store.stream_state(u, "d", window=10)
    await store.redis.delete(keys.meta(u))  # the stream is there, its epoch and trim mark are not
    after, _ = await store.stream_state(u, "d", window=10)
    [(oldest, _)] = await store.redis.xrange(keys.outbound(u), count=1)
    assert after.epoch != before.epoch
    assert after.trimmed == oldest  # anything before the oldest retained entry may be lost
    assert resolve(after, last_id=before.last_id, epoch=before.epoch, stored=None).recovered is False
    await store.redis.delete(keys.work(0))


async def test_offsets_only_move_forward_within_an_epoch(store):
    u = user()
    assert await store.store_offset(u, "phone", "E", "10-0")
    assert not await store.store_offset(u, "phone", "E", "9-0")
    assert not await store.store_offset(u, "phone", "E", "10-0")
    assert await store.store_offset(u, "phone", "E", "10-1")
    assert await store.store_offset(u, "phone", "F", "1-0")  # a new life starts over
    _, stored = await store.stream_state(u, "phone", window=1)
    assert stored == ("F", "1-0")


async def test_a_client_msg_id_is_remembered_for_dedup_ttl_only(redis_url):
    import asyncio

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    short = GatewayStore(client, StreamSettings(dedup_ttl=1))
    u = user()
    first, _ = await short.accept(u, "d", "c", "m1", "hello")
    assert (await short.accept(u, "d", "c", "m1", "hello"))[0] == first
    await asyncio.sleep(1.2)
    later, fresh = await short.accept(u, "d", "c", "m1", "hello")
    assert fresh and later != first  # past DEDUP_TTL a resend is a new message
    await client.delete(keys.work(0))
    await client.aclose()


async def test_the_replay_window_starts_before_the_newest_events(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = GatewayStore(client, StreamSettings(outbound_maxlen=1000, work_shards=1))
    u = user()
    empty, _ = await store.stream_state(u, "d", window=3)
    assert (empty.last_id, empty.window_start) == ("0-0", "0-0")
    await store.accept_many(u, "d", "c", [(f"m{i}", f"text {i}") for i in range(5)])
    ids = [entry_id for entry_id, _ in await client.xrange(keys.outbound(u))]
    for window, start in ((0, ids[-1]), (3, ids[1]), (4, ids[0]), (5, "0-0"), (100, "0-0")):
        state, _ = await store.stream_state(u, "d", window=window)
        assert (state.last_id, state.window_start) == (ids[-1], start), window
    await client.delete(keys.work(0))
    await client.aclose()


async def test_accept_many_appends_like_accept_in_order(store):
    u = user()
    work_before = await store.redis.xlen(keys.work(0))
    in_ids = await store.accept_many(u, "d", "c", [("m1", "one"), ("m2", "two")])
    again = await store.accept_many(u, "d", "c", [("m2", "two, resent"), ("m3", "three")])
    assert again[0] == in_ids[1]  # deduplicated per client_msg_id, as accept does
    out = await store.redis.xrange(keys.outbound(u))
    assert [f["text"] for _, f in out] == ["one", "two", "three"]
    assert [f["in"] for _, f in out] == [*in_ids, again[1]]
    # The first message's conversation had nothing waiting: one notice. The
    # rest joined it; m2's repeat is the lost-notice safety net's (once).
    assert await store.redis.xlen(keys.work(0)) - work_before == 2
    await store.redis.delete(keys.work(0))


async def test_accept_survives_redis_forgetting_its_script(redis_url):
    """Accept sends its script by SHA; after a restart or flush (NOSCRIPT) it
    loads the script and goes again."""
    import redis.asyncio as aioredis

    from switchboard.gateway.store import GatewayStore
    from switchboard.shared.settings import StreamSettings

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = GatewayStore(client, StreamSettings(work_shards=1))
    await client.script_flush()
    in_id, fresh = await store.accept("u-noscript", "phone", "c", "m1", "hello")
    assert fresh and (await client.xrange(keys.inbound("u-noscript", "c")))[0][0] == in_id
    notices = [f for _, f in await client.xrange(keys.work(0)) if f.get("user") == "u-noscript"]
    assert notices and all(n == {"user": "u-noscript", "conv": "c"} for n in notices)
    assert await store.accept("u-noscript", "phone", "c", "m1", "hello") == (in_id, False)
    await client.delete(keys.work(0))
    await client.aclose()


async def test_a_conversation_keeps_the_graph_of_its_first_message(store):
    from switchboard.gateway.store import OverLimit

    u = user()
    first = await store.accept(u, "phone", "s", "m1", "quote?", graph="sales", default_graph="support")
    later = await store.accept(u, "phone", "s", "m2", "thanks", default_graph="support")  # names none
    same = await store.accept(u, "phone", "s", "m3", "more", graph="sales", default_graph="support")
    with pytest.raises(OverLimit) as refused:
        await store.accept(u, "phone", "s", "m4", "wrong desk", graph="support", default_graph="support")
    assert refused.value.code == "graph_mismatch"
    await store.accept(u, "phone", "d", "n1", "hello", default_graph="support")
    entries = {e: f for e, f in await store.redis.xrange(keys.inbound(u, "s"))}
    assert [entries[a.id]["graph"] for a in (first, later, same)] == ["sales"] * 3
    assert len(entries) == 3  # the refused message stored nothing
    assert (await store.redis.xrange(keys.inbound(u, "d")))[0][1]["graph"] == "support"
    assert await store.redis.hget(keys.conversation(u, "s"), "graph") == "sales"
    # A conversation from before graphs were chosen (no graph field) runs the default.
    await store.redis.hdel(keys.conversation(u, "d"), "graph")
    with pytest.raises(OverLimit):
        await store.accept(u, "phone", "d", "n2", "other", graph="sales", default_graph="support")
    await store.accept(u, "phone", "d", "n3", "same", graph="support", default_graph="support")
    await store.redis.delete(keys.work(0))


def test_a_default_title_is_the_start_of_the_first_message():
    from switchboard.gateway.store import DEFAULT_TITLE_LENGTH, default_title

    assert default_title("  hello\n\tthere  ") == "hello there"
    long = "word " * 40
    title = default_title(long)
    assert title.endswith("…") and len(title) <= DEFAULT_TITLE_LENGTH and not title[:-1].endswith(" ")
    assert default_title("x" * 100) == "x" * (DEFAULT_TITLE_LENGTH - 1) + "…"  # no space to cut at


async def test_conversations_page_newest_first_through_ties_and_skip_expired_ones(store):
    u = user()
    for c in ("a", "b", "c", "d", "e"):
        await store.accept(u, "phone", c, f"{c}1", f"first of {c}")
    # Equal scores (one ms for all but "a"), and "c" expired with retention:
    await store.redis.zadd(keys.conversations(u), {"b": 5000, "c": 5000, "d": 5000, "e": 5000, "a": 4000})
    await store.redis.delete(keys.conversation(u, "c"))
    seen, cursor, pages = [], None, 0
    while True:
        rows, more = await store.list_conversations(u, limit=2, before=cursor)
        seen += [r.id for r in rows]
        pages += 1
        if not more:
            break
        cursor = (rows[-1].updated_ms, rows[-1].id)
    assert seen == ["e", "d", "b", "a"] and pages == 2
    [first] = (await store.list_conversations(u, limit=1))[0]
    assert (first.title, first.count, first.graph) == ("first of e", 1, "default") and first.created_ms
    await store.redis.delete(keys.work(0))


def test_history_pages_back_by_message_id():
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from switchboard.gateway.history import history_page

    messages = [HumanMessage("q1", id="h1"), AIMessage("a1", id="x1"), ToolMessage("t", tool_call_id="t", id="t1"),
                HumanMessage("q2", id="h2"), AIMessage("a2", id="x2")]
    newest, more = history_page(messages, 2)
    assert [(m.id, m.text) for m in newest] == [("h2", "q2"), ("x2", "a2")] and more
    older, more = history_page(messages, 2, before="h2")
    assert [m.id for m in older] == ["h1", "x1"] and not more
    assert history_page(messages, 2, before="unknown") == (newest, True)
