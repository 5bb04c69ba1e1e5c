"""The worker's fenced checkpointer, against a real Redis: a write without the
lease is refused, and the kept newest checkpoint reads exactly what the
library would read from Redis and never hides a checkpoint written by another
worker. The drains at the end run the kept copy through ``Turns``. (How the
document is written: ``test_checkpoint_format.py``.)"""

import asyncio

import pytest
import redis.asyncio as aioredis
from langchain_core.messages import HumanMessage

from switchboard.shared.checkpoints import setup_saver
from switchboard.worker.fencing import FencedRedisSaver, fence_config
from switchboard.worker.graph import build
from switchboard.worker.lease import LeaseLostError

THREAD = "u1:c1"


@pytest.fixture
async def client(clean_redis):
    redis = aioredis.Redis.from_url(clean_redis)
    yield redis
    await redis.aclose()


async def _saver(client, **kw) -> FencedRedisSaver:
    saver = FencedRedisSaver(redis_client=client, **kw)
    await setup_saver(saver)
    return saver


def _config(token: str = "tok-a") -> dict:
    return {"configurable": {"thread_id": THREAD, **fence_config("lease", token)}}


async def _latest(client, saver: FencedRedisSaver) -> str | None:
    """The thread's latest checkpoint pointer, as the begin script reads it."""
    pointer = await client.get(saver.latest_key(THREAD))
    return pointer.decode() if pointer is not None else None


async def _turn(graph, text: str, n: int, token: str = "tok-a") -> dict:
    """A turn, and its checkpoint stored as the commit script would (fenced)."""
    result = await graph.ainvoke({"messages": [HumanMessage(text, id=f"in-{n}")]}, _config(token),
                                 durability="exit")
    await graph.checkpointer.store_waiting(THREAD)
    return result


async def test_kept_copy_reads_exactly_what_redis_holds(client):
    await client.set("lease", "tok-a")
    saver = await _saver(client)
    graph = build().compile(checkpointer=saver)
    for n in range(5):
        await _turn(graph, f"tell me about sailing boats {n}", n)
    assert saver.hits == 4  # every turn after the first read its state from memory
    kept = await saver.aget_tuple(_config())
    stored = await (await _saver(client, cache_size=0)).aget_tuple({"configurable": {"thread_id": THREAD}})
    assert kept.checkpoint["id"] == stored.checkpoint["id"]
    assert (await _latest(client, saver)).endswith(kept.checkpoint["id"])
    assert kept.checkpoint["channel_values"] == stored.checkpoint["channel_values"]
    assert kept.checkpoint["channel_versions"] == stored.checkpoint["channel_versions"]
    assert kept.checkpoint["versions_seen"] == stored.checkpoint["versions_seen"]
    assert kept.metadata == stored.metadata and kept.parent_config == stored.parent_config
    assert kept.pending_writes == stored.pending_writes == []
    # The copy handed out is the graph's to change: the kept one stays as it was.
    kept.checkpoint["channel_values"]["turn"] = 99
    assert (await saver.aget_tuple(_config())).checkpoint["channel_values"]["turn"] == 5


async def test_a_turn_run_by_another_worker_is_never_hidden(client):
    await client.set("lease", "tok-a")
    first = await _saver(client)
    graph_a = build().compile(checkpointer=first)
    await _turn(graph_a, "hello", 1)
    # The conversation moves to another worker (a hand-over, a failover) ...
    await client.set("lease", "tok-b")
    second = await _saver(client)
    await _turn(build().compile(checkpointer=second), "second turn elsewhere", 2, token="tok-b")
    # ... and back: the first worker checks its copy when it takes the lease.
    await client.set("lease", "tok-a")
    first.validate(THREAD, await _latest(client, first))
    result = await _turn(graph_a, "third", 3)
    assert [m.id for m in result["messages"] if isinstance(m, HumanMessage)] == ["in-1", "in-2", "in-3"]
    assert result["turn"] == 3


async def test_a_write_without_the_lease_is_refused_and_forgets_the_copy(client):
    await client.set("lease", "tok-a")
    saver = await _saver(client)
    graph = build().compile(checkpointer=saver)
    await _turn(graph, "hello", 1)
    before = await _latest(client, saver)
    await client.set("lease", "someone-else")
    with pytest.raises(LeaseLostError):
        await _turn(graph, "too late", 2)
    assert await _latest(client, saver) == before  # the newest checkpoint is not moved
    assert THREAD not in saver._newest
    stored = await saver.aget_tuple({"configurable": {"thread_id": THREAD}})
    assert stored.checkpoint["channel_values"]["turn"] == 1


async def test_pending_writes_send_the_next_read_to_redis(client):
    await client.set("lease", "tok-a")
    saver = await _saver(client)
    graph = build().compile(checkpointer=saver)
    await _turn(graph, "hello", 1)
    tup = await saver.aget_tuple(_config())
    await saver.aput_writes({**tup.config, "configurable": {**tup.config["configurable"], **_config()["configurable"]}},
                            [("topic", "from a pending write")], "task-1")
    hits = saver.hits
    fresh = await saver.aget_tuple(_config())
    assert saver.hits == hits and [w[2] for w in fresh.pending_writes] == ["from a pending write"]
    await client.set("lease", "someone-else")  # pending writes are fenced too
    with pytest.raises(LeaseLostError):
        await saver.aput_writes({**tup.config, "configurable": {**tup.config["configurable"],
                                                                **_config()["configurable"]}},
                                [("topic", "too late")], "task-2")


async def test_the_copies_are_bounded(client):
    await client.set("lease", "tok-a")
    saver = await _saver(client, cache_size=2)
    graph = build().compile(checkpointer=saver)
    for n in range(4):
        await graph.ainvoke({"messages": [HumanMessage("hi", id=f"in-{n}")]},
                            {"configurable": {"thread_id": f"t{n}", **fence_config("lease", "tok-a")}},
                            durability="exit")
        await saver.store_waiting(f"t{n}")
    assert list(saver._newest) == ["t2", "t3"]


async def test_turns_find_entries_past_full_pages_and_release_the_lease(clean_redis):
    """The begin and commit scripts scan one page each; a conversation whose
    next message sits behind more than a page of another conversation's is
    still found, in order, and the lease is gone once nothing is left."""
    from switchboard.shared import keys
    from switchboard.shared.settings import WorkerSettings
    from switchboard.worker.store import SCAN_PAGE
    from switchboard.worker.turns import Turns

    redis = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    raw = aioredis.Redis.from_url(clean_redis)
    saver = await _saver(raw)
    turns = Turns(redis, build().compile(checkpointer=saver), WorkerSettings())
    inbound = keys.inbound("u")

    async def add(conv: str, text: str) -> str:
        return await redis.xadd(inbound, {"conv": conv, "cmid": text, "dev": "d", "text": text})

    mine = [await add("a", "first")]
    for i in range(SCAN_PAGE + 20):
        await add("b", f"other {i}")
    mine.append(await add("a", "second"))
    for i in range(SCAN_PAGE * 2):
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
    saver = await _saver(raw)
    turns = Turns(redis, build().compile(checkpointer=saver), replace(WorkerSettings(), checkpoint_keep=4))
    thread = keys.thread_id("u", "a")
    counts = []
    for n in range(12):
        await redis.xadd(keys.inbound("u"), {"conv": "a", "cmid": f"m{n}", "dev": "d", "text": f"turn {n}"})
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
    turns = Turns(redis, build().compile(checkpointer=await _saver(raw)), settings)
    await redis.xadd(keys.inbound("u"), {"conv": "a", "cmid": "m1", "dev": "d", "text": "hello"})
    await redis.set(keys.lease("u", "a"), turns.tokens.prefix + "0123456789abcdef", px=30_000)
    # Taken back at once: the drain ends long before the lease's 30 s TTL.
    assert await asyncio.wait_for(turns.drain("u", "a"), timeout=20) is True
    assert [f["kind"] for _, f in await redis.xrange(keys.outbound("u"))] == ["assistant"]

    other = Turns(redis, turns.graph, replace(WorkerSettings(), lease_ttl=0.5))
    await redis.xadd(keys.inbound("u"), {"conv": "a", "cmid": "m2", "dev": "d", "text": "again"})
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
    saver = await _saver(raw)
    turns = SlowToSeeTheCommit(redis, build().compile(checkpointer=saver),
                               replace(WorkerSettings(), lease_ttl=0.6))  # renewal every 0.2 s
    await redis.xadd(keys.inbound("u"), {"conv": "a", "cmid": "m1", "dev": "d", "text": "hello"})
    assert await turns.drain("u", "a") is True
    assert await redis.hget(keys.conversation("u", "a"), "done") is not None
    await redis.aclose()
    await raw.aclose()
