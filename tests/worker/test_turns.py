"""Running turns (turns.py) against a real Redis: in order past full pages,
the lease released when nothing is left, checkpoints pruned, a lease left
behind by this process taken back, and a commit that releases the lease
while a renewal is due is not a lost lease."""

import asyncio

import redis.asyncio as aioredis
from langchain_core.messages import AIMessage, HumanMessage

from switchboard.worker.graph import build
from switchboard.worker.outcomes import message_id, reply_after
from tests.support.savers import fenced_saver


def test_reply_after_finds_the_recorded_reply_of_a_message():
    messages = [HumanMessage("a", id="in-1"), AIMessage("A1"), AIMessage("A2"),
                HumanMessage("b", id="in-2"), AIMessage("B")]
    assert reply_after(messages, "in-1") == "A1\nA2"
    assert reply_after(messages, "in-2") == "B"
    assert reply_after(messages, "in-3") is None
    assert reply_after([HumanMessage("c", id="in-4")], "in-4") is None  # ran, but no reply recorded
    assert message_id("17-0") == "in-17-0"


async def test_turns_run_in_order_whatever_other_conversations_hold_and_release_the_lease(clean_redis):
    """A conversation's entries are found in order however much another
    conversation of the user has waiting, and the lease is gone once nothing
    is left."""
    from switchboard.shared import keys
    from switchboard.shared.settings import WorkerSettings
    from switchboard.worker.turns import Turns

    redis = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    raw = aioredis.Redis.from_url(clean_redis)
    saver = await fenced_saver(raw)
    turns = Turns(redis, build().compile(checkpointer=saver), WorkerSettings())

    async def add(conv: str, text: str) -> str:
        return await redis.xadd(keys.inbound("u", conv), {"cmid": text, "dev": "d", "text": text})

    mine = [await add("a", "first")]
    for i in range(220):
        await add("b", f"other {i}")
    mine.append(await add("a", "second"))
    for i in range(400):
        await add("b", f"more {i}")
    mine.append(await add("a", "third"))
    assert await turns.drain("u", "a") is True
    assert await redis.exists(keys.lease("u", "a")) == 0
    assert await redis.hget(keys.conversation("u", "a"), "done") == mine[-1]
    replies = [fields for _, fields in await redis.xrange(keys.outbound("u"))]
    assert [(r["kind"], r["in"]) for r in replies] == [("assistant", entry) for entry in mine]
    assert saver.hits == 2  # the second and third turns read their state from memory
    state = await turns.graph.aget_state({"configurable": {"thread_id": keys.thread_id("u", "a")}})
    assert [m.content for m in state.values["messages"] if isinstance(m, HumanMessage)] == \
        ["first", "second", "third"]
    # A drain with nothing to do takes the lease, finds nothing and gives it back.
    assert await turns.drain("u", "a") is True
    assert await redis.exists(keys.lease("u", "a")) == 0
    await redis.aclose()
    await raw.aclose()


async def test_old_checkpoints_are_pruned_to_checkpoint_keep(clean_redis):
    from dataclasses import replace

    from switchboard.shared import keys
    from switchboard.shared.settings import WorkerSettings
    from switchboard.worker.turns import Turns

    redis = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    raw = aioredis.Redis.from_url(clean_redis)
    saver = await fenced_saver(raw)
    turns = Turns(redis, build().compile(checkpointer=saver), replace(WorkerSettings(), checkpoint_keep=4))
    thread = keys.thread_id("u", "a")
    counts = []
    for n in range(12):
        await redis.xadd(keys.inbound("u", "a"), {"cmid": f"m{n}", "dev": "d", "text": f"turn {n}"})
        assert await turns.drain("u", "a") is True
        counts.append(len([t async for t in saver.alist({"configurable": {"thread_id": thread}})]))
    assert max(counts) <= 4 + 4 // 2 and counts[-1] >= 4  # bounded, and the newest are kept
    state = await turns.graph.aget_state({"configurable": {"thread_id": thread}})
    assert state.values["turn"] == 12  # the newest checkpoint holds the whole conversation
    await redis.aclose()
    await raw.aclose()


async def test_a_lease_this_process_left_behind_is_taken_back_at_once(clean_redis):
    """Releasing a lease can fail (Redis down, or restarted from its AOF with
    the lease in it); the process that left it takes it back at once. A lease
    of another process is waited for, never taken."""
    from dataclasses import replace

    from switchboard.shared import keys
    from switchboard.shared.settings import WorkerSettings
    from switchboard.worker.turns import Turns

    redis = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    raw = aioredis.Redis.from_url(clean_redis)
    settings = replace(WorkerSettings(), lease_ttl=30.0)
    turns = Turns(redis, build().compile(checkpointer=await fenced_saver(raw)), settings)
    await redis.xadd(keys.inbound("u", "a"), {"cmid": "m1", "dev": "d", "text": "hello"})
    await redis.set(keys.lease("u", "a"), turns.tokens.prefix + "0123456789abcdef", px=30_000)
    # Taken back at once: the drain ends long before the lease's 30 s TTL.
    assert await asyncio.wait_for(turns.drain("u", "a"), timeout=20) is True
    assert [f["kind"] for _, f in await redis.xrange(keys.outbound("u"))] == ["assistant"]

    other = Turns(redis, turns.graph, replace(WorkerSettings(), lease_ttl=0.5))
    await redis.xadd(keys.inbound("u", "a"), {"cmid": "m2", "dev": "d", "text": "again"})
    await redis.set(keys.lease("u", "a"), turns.tokens.prefix + "fedcba9876543210", px=30_000)
    assert await other.drain("u", "a") is False  # another process's lease: waited for, not taken
    assert len(await redis.xrange(keys.outbound("u"))) == 1
    await redis.aclose()
    await raw.aclose()


async def test_a_commit_that_releases_the_lease_while_a_renewal_is_due_is_not_a_lost_lease(clean_redis):
    """The last commit of a drain releases the lease itself; a renewal timer
    firing before the drain has seen that reply finds no lease. That is not a
    lost lease: the drain finishes normally (its notices are acknowledged)."""
    from dataclasses import replace

    from switchboard.shared import keys
    from switchboard.shared.settings import WorkerSettings
    from switchboard.worker.turns import Turns

    class SlowToSeeTheCommit(Turns):
        async def _commit(self, *args, **kwargs):  # noqa: ANN002, ANN003
            result = await super()._commit(*args, **kwargs)
            await asyncio.sleep(0.5)  # a busy event loop between the reply and its handling
            return result

    redis = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    raw = aioredis.Redis.from_url(clean_redis)
    saver = await fenced_saver(raw)
    turns = SlowToSeeTheCommit(redis, build().compile(checkpointer=saver),
                               replace(WorkerSettings(), lease_ttl=0.6))  # renewal every 0.2 s
    await redis.xadd(keys.inbound("u", "a"), {"cmid": "m1", "dev": "d", "text": "hello"})
    assert await turns.drain("u", "a") is True
    assert await redis.hget(keys.conversation("u", "a"), "done") is not None
    await redis.aclose()
    await raw.aclose()


async def test_a_reply_whose_last_deltas_were_not_written_is_not_committed_but_retried(clean_redis):
    """Redis going away under the final delta write leaves the attempt's
    deltas short of its reply: that attempt must not be committed (a device
    would rebuild a reply that stops early). The drain fails as an outage
    and the retry streams the reply again from seq 0, whole, uncounted."""
    from dataclasses import replace

    from redis.exceptions import ConnectionError as RedisConnectionError

    from switchboard.shared import keys
    from switchboard.shared.settings import WorkerSettings
    from switchboard.worker.turns import Turns

    redis = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    raw = aioredis.Redis.from_url(clean_redis)
    # A long interval: the first piece is written at once, the rest in the final flush.
    settings = replace(WorkerSettings(), stream_deltas=True, delta_interval=30.0, max_attempts=1)
    turns = Turns(redis, build(stream=True, token_ms=1).compile(checkpointer=await fenced_saver(raw)), settings)
    store = turns.deltas.store
    writes = {"n": 0}
    original = store.write_delta

    async def final_flush_fails_once(*args, **kwargs):  # noqa: ANN002, ANN003
        writes["n"] += 1
        if writes["n"] == 2:
            raise RedisConnectionError("Redis went away")
        return await original(*args, **kwargs)

    store.write_delta = final_flush_fails_once
    await redis.xadd(keys.inbound("u", "a"), {"cmid": "m1", "dev": "d", "text": "tell me about the sea"})
    try:
        await turns.drain("u", "a")
    except RedisConnectionError:
        pass
    else:
        raise AssertionError("a reply with deltas missing was committed")
    assert [f["kind"] for _, f in await redis.xrange(keys.outbound("u"))] == ["delta"]  # no reply yet

    assert await turns.drain("u", "a") is True
    events = [f for _, f in await redis.xrange(keys.outbound("u"))]
    assert [e["kind"] for e in events][-1] == "assistant"
    last_attempt = events[max(i for i, e in enumerate(events) if e.get("seq") == "0"):-1]
    assert [e["seq"] for e in last_attempt] == [str(n) for n in range(len(last_attempt))]
    assert "".join(e["text"] for e in last_attempt) == events[-1]["text"]
    assert await redis.xrange(keys.dead_letters()) == []  # MAX_ATTEMPTS=1, and the outage was not counted
    await redis.aclose()
    await raw.aclose()


async def test_a_cancel_notice_heard_before_the_begin_answer_stops_the_turn(clean_redis):
    """The begin that takes an entry can run before a cancel marks it, and
    still be answered after the cancel's notice reached this process (two
    connections): the notice found nothing running then. It is kept
    (briefly), so the turn, once taken, is stopped at once -- not left to run
    to its end and only then be written as ``cancelled``."""
    import time
    from dataclasses import replace

    from switchboard.shared import keys
    from switchboard.shared.settings import WorkerSettings
    from switchboard.worker.turns import Turns
    from tests.support.graphs import slow

    redis = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    raw = aioredis.Redis.from_url(clean_redis)
    saver = await fenced_saver(raw)
    turns = Turns(redis, slow.compile(checkpointer=saver), replace(WorkerSettings(), turn_timeout=60))
    entry = await redis.xadd(keys.inbound("u", "a"), {"cmid": "long", "dev": "d", "text": "sleep:30 think"})
    assert turns.cancel("u", "a", entry) is False  # heard before this process runs anything
    assert turns.cancel("u", "b", entry) is False  # (another conversation's: not this one's business)
    started = time.monotonic()
    assert await turns.drain("u", "a") is True
    assert time.monotonic() - started < 10  # stopped, not slept through
    [(_, reply)] = [e for e in await redis.xrange(keys.outbound("u")) if e[1]["kind"] != "user"]
    assert (reply["kind"], reply["in"]) == ("cancelled", entry)
    # A notice for an entry before the one taken does not stop it.
    later = await redis.xadd(keys.inbound("u", "a"), {"cmid": "next", "dev": "d", "text": "sleep:0 quick"})
    assert turns.cancel("u", "a", entry) is False
    assert await turns.drain("u", "a") is True
    assert [e[1]["kind"] for e in await redis.xrange(keys.outbound("u")) if e[1]["in"] == later] == ["assistant"]
    await redis.aclose()
    await raw.aclose()
