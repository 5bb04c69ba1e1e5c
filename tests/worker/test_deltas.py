"""Delta events (deltas.py) on a real Redis: written only by the lease
holder, joined by the interval, and a refused write stops the graph."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from switchboard.shared import keys
from switchboard.shared.protocol import EventKind
from switchboard.shared.settings import StreamSettings
from switchboard.worker.deltas import DeltaWriter
from switchboard.worker.lease import LeaseLostError
from switchboard.worker.store import WorkerStore
from tests.support.client import new_user


def _store(client) -> WorkerStore:
    return WorkerStore(client, StreamSettings(outbound_maxlen=1000), lease_ttl=15.0)


async def test_a_delta_is_written_only_by_the_lease_holder(clean_redis):
    client = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    user, conversation = new_user(), "c"
    lease = keys.lease(user, conversation)
    await client.set(lease, "mine")
    writer = DeltaWriter(_store(client), interval=0.0)
    stream = writer.reply(user, conversation, token="mine", client_msg_id="m1", inbound_id="1-0")
    stream.add("Hello")
    await asyncio.sleep(0.2)
    stream.add(", world")
    await asyncio.sleep(0.2)
    stream.add(" and the rest")
    await stream.close()  # writes what is waiting at once, and returns with no write in flight
    entries = await client.xrange(keys.outbound(user))
    assert [(f["kind"], f["text"], f["seq"], f["cmid"]) for _, f in entries] == [
        (EventKind.DELTA.value, "Hello", "0", "m1"), (EventKind.DELTA.value, ", world", "1", "m1"),
        (EventKind.DELTA.value, " and the rest", "2", "m1")]

    # The interval bounds the writes: pieces streamed meanwhile are joined into one delta.
    spaced = DeltaWriter(_store(client), interval=0.3).reply(
        user, conversation, token="mine", client_msg_id="m2", inbound_id="2-0")
    for word in ["One", " two", " three", " four"]:
        spaced.add(word)
        await asyncio.sleep(0.02)
    await spaced.close()
    texts = [f["text"] for _, f in await client.xrange(keys.outbound(user)) if f["cmid"] == "m2"]
    assert texts == ["One", " two three four"]

    await client.set(lease, "someone-else")  # the lease moved on (this worker stalled)
    late = writer.reply(user, conversation, token="mine", client_msg_id="m1", inbound_id="1-0")
    late.add("stale words")
    await asyncio.sleep(0.2)
    await late.close()
    assert len(await client.xrange(keys.outbound(user))) == 5  # refused
    assert isinstance(late.error, LeaseLostError)
    try:
        late.add("more")
    except LeaseLostError:
        pass
    else:
        raise AssertionError("a stream that lost its lease must raise into the graph")
    await client.aclose()


async def test_a_lease_lost_while_streaming_stops_the_graph(clean_redis):
    """The graph runs on only as long as its deltas are accepted: a refused
    write ends the attempt with LeaseLostError at the model's next token."""
    from langchain_core.messages import HumanMessage

    from switchboard.worker.graph import build

    client = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    user = new_user()
    lease = keys.lease(user, "c")
    await client.set(lease, "mine")
    stream = DeltaWriter(_store(client), interval=0.0).reply(
        user, "c", token="mine", client_msg_id="m1", inbound_id="1-0")
    graph = build(stream=True, token_ms=50).compile()

    async def take_the_lease_after_the_first_delta() -> None:
        while not await client.xlen(keys.outbound(user)):
            await asyncio.sleep(0.01)
        await client.set(lease, "another-worker")

    thief = asyncio.create_task(take_the_lease_after_the_first_delta())
    try:
        await graph.ainvoke({"messages": [HumanMessage("tell me a long story about the sea")]},
                            {"callbacks": [stream]})
    except LeaseLostError:
        pass
    else:
        raise AssertionError("the graph ran to the end without its lease")
    finally:
        await thief
        await stream.close()
    written = await client.xlen(keys.outbound(user))
    assert 1 <= written < 10  # the reply has ~20 words: the run stopped early
    await client.aclose()
