"""The worker's fenced checkpointer, against a real Redis: a write without the
lease is refused, and the kept newest checkpoint reads exactly what the
library would read from Redis and never hides a checkpoint written by another
worker. (How the document is written: ``test_checkpoint_format.py``; drains
through ``Turns``: ``test_turns.py``.)"""

import pytest
import redis.asyncio as aioredis
from langchain_core.messages import HumanMessage

from switchboard.worker.fencing import FencedRedisSaver, fence_config
from switchboard.worker.graph import build
from switchboard.worker.lease import LeaseLostError
from tests.support.savers import fenced_saver

THREAD = "u1:c1"


@pytest.fixture
async def client(clean_redis):
    redis = aioredis.Redis.from_url(clean_redis)
    yield redis
    await redis.aclose()


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
    saver = await fenced_saver(client)
    graph = build().compile(checkpointer=saver)
    for n in range(5):
        await _turn(graph, f"tell me about sailing boats {n}", n)
    assert saver.hits == 4  # every turn after the first read its state from memory
    kept = await saver.aget_tuple(_config())
    stored = await (await fenced_saver(client, cache_size=0)).aget_tuple({"configurable": {"thread_id": THREAD}})
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
    first = await fenced_saver(client)
    graph_a = build().compile(checkpointer=first)
    await _turn(graph_a, "hello", 1)
    # The conversation moves to another worker (a hand-over, a failover) ...
    await client.set("lease", "tok-b")
    second = await fenced_saver(client)
    await _turn(build().compile(checkpointer=second), "second turn elsewhere", 2, token="tok-b")
    # ... and back: the first worker checks its copy when it takes the lease.
    await client.set("lease", "tok-a")
    first.validate(THREAD, await _latest(client, first))
    result = await _turn(graph_a, "third", 3)
    assert [m.id for m in result["messages"] if isinstance(m, HumanMessage)] == ["in-1", "in-2", "in-3"]
    assert result["turn"] == 3


async def test_a_write_without_the_lease_is_refused_and_forgets_the_copy(client):
    await client.set("lease", "tok-a")
    saver = await fenced_saver(client)
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
    saver = await fenced_saver(client)
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
    saver = await fenced_saver(client, cache_size=2)
    graph = build().compile(checkpointer=saver)
    for n in range(4):
        await graph.ainvoke({"messages": [HumanMessage("hi", id=f"in-{n}")]},
                            {"configurable": {"thread_id": f"t{n}", **fence_config("lease", "tok-a")}},
                            durability="exit")
        await saver.store_waiting(f"t{n}")
    assert list(saver._newest) == ["t2", "t3"]


async def test_a_checkpoint_a_cut_short_attempt_left_waiting_is_dropped_not_stored(client):
    """A cancelled attempt's graph may write its checkpoint on the way out,
    after the drain gave up; the next attempt (another token) must neither
    store it nor be refused because of it."""
    await client.set("lease", "tok-a")
    saver = await fenced_saver(client)
    graph = build().compile(checkpointer=saver)
    await graph.ainvoke({"messages": [HumanMessage("cut short", id="in-1")]}, _config("tok-a"), durability="exit")
    assert saver.take(THREAD, "tok-b") is None  # not the committing attempt's
    await graph.ainvoke({"messages": [HumanMessage("cut short", id="in-1")]}, _config("tok-a"), durability="exit")
    await client.set("lease", "tok-b")  # the retry, under a new token
    result = await _turn(graph, "cut short", 1, token="tok-b")
    assert [m.id for m in result["messages"] if isinstance(m, HumanMessage)] == ["in-1"]
    stored = await (await fenced_saver(client, cache_size=0)).aget_tuple({"configurable": {"thread_id": THREAD}})
    assert [m.id for m in stored.checkpoint["channel_values"]["messages"] if isinstance(m, HumanMessage)] == ["in-1"]
