"""The checkpoint the worker writes is the library's own, against a real Redis:
the document equals the one the library's ``aput`` writes, field for field; a
stock ``AsyncRedisSaver`` (no Switchboard subclass or serializer) reads it --
with a TTL, and across pending writes; a checkpoint written through the
library between two turns, and one that expired, are never hidden by the
worker's kept copy."""

import asyncio
import gc
import json
import time
from dataclasses import replace

import orjson
import pytest
import redis.asyncio as aioredis
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import interrupt

from switchboard.gateway.history import HistoryReader
from switchboard.shared import keys
from switchboard.shared.checkpoints import setup_saver, use_caching_serializer
from switchboard.shared.settings import WorkerSettings
from switchboard.worker import checkpoint_format
from switchboard.worker.checkpoint_format import EncodingSerializer
from switchboard.worker.fencing import FencedRedisSaver
from switchboard.worker.graph import build
from switchboard.worker.turns import Turns

USER = "u"
THREAD = "u1:c1"


async def _stock(raw, **kw) -> AsyncRedisSaver:
    """A plain library saver, as another process (an admin tool) would use."""
    saver = AsyncRedisSaver(redis_client=raw, **kw)
    await saver.asetup()
    return saver


async def _worker(redis, raw, graph: StateGraph | None = None, **settings) -> Turns:
    """A worker's turns, its saver built as the worker's ``serve`` builds it."""
    settings = replace(WorkerSettings(), **settings)
    ttl = {"default_ttl": settings.checkpoint_ttl, "refresh_on_read": True} if settings.checkpoint_ttl else None
    saver = FencedRedisSaver(redis_client=raw, ttl=ttl, cache_size=settings.checkpoint_cache)
    await setup_saver(saver)
    return Turns(redis, (graph or build()).compile(checkpointer=saver), settings)


async def _say(turns: Turns, conversation: str, text: str) -> str:
    """Send a message (an inbound entry, as the gateway adds it), drain the
    conversation and return the reply's text."""
    redis = turns.store.redis
    entry = await redis.xadd(keys.inbound(USER, conversation),
                             {"cmid": f"{conversation}-{text}", "dev": "d", "text": text})
    assert await turns.drain(USER, conversation) is True
    replies = [fields["text"] for _, fields in await redis.xrange(keys.outbound(USER)) if fields["in"] == entry]
    assert len(replies) == 1
    return replies[0]


def _texts(messages) -> list[tuple[str, str]]:
    return [(m.type, m.content) for m in messages]


# -- the document, field for field -------------------------------------------------------

async def test_the_commit_stores_the_library_document_field_for_field(raw):
    """The document the commit script stores is the one the library's own
    ``aput`` stores for the same checkpoint (so the library reads, lists and
    searches it as usual); only ``checkpoint_ts`` may differ: LangGraph's ids
    are not ULIDs, so both stamp the time of writing."""
    captured = []

    class Recording(AsyncRedisSaver):
        async def aput(self, config, checkpoint, metadata, new_versions):  # noqa: ANN001
            captured.append((config, checkpoint, metadata))
            return await super().aput(config, checkpoint, metadata, new_versions)

    library = Recording(redis_client=raw)
    await library.asetup()
    graph = build().compile(checkpointer=library)
    started = time.time() * 1000
    for n in range(3):
        await graph.ainvoke({"messages": [HumanMessage(f"sailing {n} ünïcode", id=f"in-{n}")]},
                            {"configurable": {"thread_id": THREAD}, "run_id": f"run-{n}"}, durability="exit")
    # Checkpoints LangGraph's own runs do not make here: integer channel
    # versions, a state holding bytes (the library's msgpack route), a run id
    # in the config.
    written_directly = [
        {**empty_checkpoint(), "channel_values": {"messages": [HumanMessage("hi", id="in-x")], "topic": "ü"},
         "channel_versions": {"messages": 3, "topic": 4}},
        {**empty_checkpoint(), "channel_values": {"blob": b"\x00\xffbytes", "messages": [AIMessage("hi")]},
         "channel_versions": {"blob": 1, "messages": 2}},
    ]
    for checkpoint in written_directly:
        config = {"configurable": {"thread_id": THREAD, "checkpoint_ns": "",
                                   "checkpoint_id": captured[-1][1]["id"], "run_id": "run-x"}}
        await library.aput(config, checkpoint, {"source": "update", "step": 9, "note": "ünï"}, {})

    ours = FencedRedisSaver(redis_client=raw)
    for config, checkpoint, metadata in captured:
        written = checkpoint_format.document(ours, config, checkpoint, metadata)
        stored = await raw.json().get(written.key)  # the same key
        mine = json.loads(written.body)
        assert started <= stored.pop("checkpoint_ts") <= mine.pop("checkpoint_ts") <= time.time() * 1000
        assert mine == stored  # every other field equal
        assert mine["checkpoint"]["channel_values"]["messages"]
    assert (await raw.get(written.latest_key)).decode() == written.key  # the same pointer
    assert mine["checkpoint"]["type"] == "msgpack" and mine["run_id"] == "run-x" and mine["parent_checkpoint_id"]
    assert len(captured) == 5


async def test_what_the_worker_commits_is_read_back_and_listed_by_the_library(redis, raw):
    """A conversation begun through the library goes on in the worker: its
    commit is the library's newest checkpoint, listed after its parent."""
    library = await _stock(raw)
    graph = build().compile(checkpointer=library)
    thread = keys.thread_id(USER, "a")
    for n in range(3):
        await graph.ainvoke({"messages": [HumanMessage(f"turn {n}", id=f"in-{n}")]},
                            {"configurable": {"thread_id": thread}}, durability="exit")
    turns = await _worker(redis, raw)
    assert (await _say(turns, "a", "after the library")).startswith("Turn 4.")
    history = [t async for t in library.alist({"configurable": {"thread_id": thread}})]
    assert len(history) == 4 and history[0].checkpoint["channel_values"]["turn"] == 4
    assert history[0].parent_config["configurable"]["checkpoint_id"] == history[1].checkpoint["id"]


# -- a stock saver reads what the worker wrote ------------------------------------------------

async def test_a_stock_saver_reads_the_newest_checkpoint_and_the_ttl_is_on_document_and_pointer(redis, raw):
    turns = await _worker(redis, raw, checkpoint_ttl=5.0)  # CHECKPOINT_TTL=5 (minutes)
    replies = [await _say(turns, "a", text) for text in ("hello there", "tell me about boats", "and sails")]
    assert turns.saver.hits == 2  # the later turns read the kept copy
    thread = keys.thread_id(USER, "a")
    kept = turns.saver._newest[thread]
    stock = await _stock(raw)
    read = await stock.aget_tuple({"configurable": {"thread_id": thread}})
    newest = [t async for t in stock.alist({"configurable": {"thread_id": thread}}, limit=1)][0]
    assert read.checkpoint["id"] == kept.checkpoint["id"] == newest.checkpoint["id"]
    assert _texts(read.checkpoint["channel_values"]["messages"]) == [
        ("human", "hello there"), ("ai", replies[0]), ("human", "tell me about boats"), ("ai", replies[1]),
        ("human", "and sails"), ("ai", replies[2])]
    assert read.checkpoint["channel_values"]["messages"] == kept.checkpoint["channel_values"]["messages"]
    assert read.checkpoint["channel_values"]["turn"] == 3 and read.pending_writes == []

    document = checkpoint_format.checkpoint_key(turns.saver, thread, read.checkpoint["id"])
    pointer = turns.saver.latest_key(thread)
    assert (await raw.get(pointer)).decode() == document
    for key in (document, pointer):
        assert 0 < await raw.pttl(key) <= 5 * 60_000
    # A stock saver with the same TTL (a second worker's library read)
    # refreshes it on both, as on its own documents.
    for key in (document, pointer):
        await raw.pexpire(key, 60_000)
    await (await _stock(raw, ttl={"default_ttl": 5.0, "refresh_on_read": True})).aget_tuple(
        {"configurable": {"thread_id": thread}})
    for key in (document, pointer):
        assert 60_000 < await raw.pttl(key) <= 5 * 60_000


def _approving() -> StateGraph:
    """A graph that stops for approval (a LangGraph interrupt) when asked."""

    async def answer(state: MessagesState) -> dict:
        text = state["messages"][-1].content
        if "approve" in text:
            decision = interrupt(f"approve {text!r}?")
            return {"messages": [AIMessage(f"approved: {decision}")]}
        return {"messages": [AIMessage(f"noted: {text}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    return builder


def _writes(pending: list) -> list:
    """Pending writes without task ids (an interrupt's id hashes its task)."""
    return [(channel, [i.value for i in value] if channel == "__interrupt__" else value)
            for _, channel, value in pending]


async def test_a_stock_saver_reads_the_pending_writes_of_an_interrupted_turn(redis, raw):
    """A turn that stops at an interrupt leaves pending writes on its
    checkpoint; a stock saver reads them as it reads the library's own: the
    same as for the same turns run by the library alone."""
    turns = await _worker(redis, raw, graph=_approving())
    assert await _say(turns, "a", "hello") == "noted: hello"
    asked = json.loads(await _say(turns, "a", "please approve the plan"))  # stopped: the interrupt event
    assert asked["value"] == "approve 'please approve the plan'?"
    library_graph = _approving().compile(checkpointer=await _stock(raw))
    alone = {"configurable": {"thread_id": "library-alone"}}
    for text in ("hello", "please approve the plan"):
        await library_graph.ainvoke({"messages": [HumanMessage(text)]}, alone, durability="exit")

    stock = await _stock(raw)
    thread = {"configurable": {"thread_id": keys.thread_id(USER, "a")}}
    ours, theirs = await stock.aget_tuple(thread), await stock.aget_tuple(alone)
    assert _writes(ours.pending_writes) == _writes(theirs.pending_writes) == \
        [("__interrupt__", ["approve 'please approve the plan'?"])]
    assert _texts(ours.checkpoint["channel_values"]["messages"]) == \
        _texts(theirs.checkpoint["channel_values"]["messages"])
    state = await library_graph.aget_state(thread)
    assert state.next == ("answer",) and [i.value for i in state.interrupts] == \
        ["approve 'please approve the plan'?"]


# -- never hidden by the kept copy -------------------------------------------------------

async def test_a_checkpoint_written_through_the_library_between_turns_is_seen_by_the_next_turn(redis, raw):
    """An admin tool's ``aupdate_state`` (a plain saver, another process)
    between two turns moves the latest pointer; the worker, holding a kept
    copy, reads the admin's checkpoint and builds on it."""
    turns = await _worker(redis, raw)
    await _say(turns, "a", "hello")
    assert (await _say(turns, "a", "tell me about boats")).startswith("Turn 2.")
    assert turns.saver.hits == 1  # the kept copy is warm
    thread = keys.thread_id(USER, "a")
    admin = build().compile(checkpointer=await _stock(raw))
    await admin.aupdate_state({"configurable": {"thread_id": thread}},
                              {"turn": 10, "messages": [AIMessage("a note from the operator", id="admin-1")]})

    reply = await _say(turns, "a", "and now?")
    assert reply.startswith("Turn 11.")  # the admin's turn counter, plus this turn
    assert turns.saver.hits == 1  # read from Redis, not from the copy
    state = (await (await _stock(raw)).aget_tuple({"configurable": {"thread_id": thread}})).checkpoint
    assert _texts(state["channel_values"]["messages"])[-3:] == [
        ("ai", "a note from the operator"), ("human", "and now?"), ("ai", reply)]
    assert state["channel_values"]["turn"] == 11


async def test_an_expired_checkpoint_starts_the_conversation_afresh_on_every_worker_and_for_history(redis, raw):
    """``CHECKPOINT_TTL``: once the checkpoint expires, a worker that still
    holds its kept copy starts afresh exactly as a second worker does, and the
    gateway finds no conversation (it answers ``unknown_conversation``)."""
    ttl_minutes = 0.05  # 3 s (the library's TTL is in minutes)
    first = await _worker(redis, raw, checkpoint_ttl=ttl_minutes)
    second = await _worker(redis, raw, checkpoint_ttl=ttl_minutes)
    gateway = HistoryReader(use_caching_serializer(AsyncRedisSaver(redis_client=raw)))
    await setup_saver(gateway.saver)
    for conversation in ("a", "b"):
        assert (await _say(first, conversation, "hello")).startswith("Turn 1.")
    assert [m.text for m in await gateway.read(USER, "a", 10)][0] == "hello"
    assert keys.thread_id(USER, "a") in first.saver._newest  # the copy the first worker keeps

    deadline = time.monotonic() + ttl_minutes * 60 + 5
    while await raw.exists(first.saver.latest_key(keys.thread_id(USER, "a")),
                           first.saver.latest_key(keys.thread_id(USER, "b"))):
        assert time.monotonic() < deadline, "the checkpoints did not expire"
        await asyncio.sleep(0.1)

    assert await gateway.read(USER, "a", 10) is None
    on_first = await _say(first, "a", "again")  # holds the expired conversation's copy
    on_second = await _say(second, "b", "again")  # never saw the conversation
    assert on_first == on_second == 'Turn 1. You said: "again". This is the start of our conversation.'
    assert [m.text for m in await gateway.read(USER, "a", 10)] == ["again", on_first]


# -- the serializer -------------------------------------------------------------------

def test_remembered_encodings_follow_the_messages():
    serde = EncodingSerializer()
    message = AIMessage("first answer", id="a-1")
    once = serde.dumps_typed({"messages": [message]})
    assert serde.dumps_typed({"messages": [message]}) == once and serde.remembered() == 1
    message.content = "an edited answer"  # a re-assigned attribute is noticed
    assert b"an edited answer" in serde.dumps_typed({"messages": [message]})[1]
    assert serde.loads_typed(serde.dumps_typed({"messages": [message]}))["messages"][0] == message
    del message
    gc.collect()
    assert serde.remembered() == 0  # an encoding lives no longer than its message


def test_remembering_can_be_turned_off():
    serde = EncodingSerializer(remember_encodings=False)
    message = AIMessage("answer", id="a-1")
    assert serde.loads_typed(serde.dumps_typed({"messages": [message]}))["messages"][0] == message
    assert serde.remembered() == 0


def test_a_growing_message_list_is_encoded_by_appending_and_stays_exact():
    serde = EncodingSerializer()
    plain = EncodingSerializer(remember_encodings=False)

    def expected(items: list) -> bytes:
        return orjson.dumps(plain._preprocess_redis_json(items), default=plain._default_handler)

    def encoded(items: list) -> bytes:
        fragment = serde.encode_list(("thread", "messages"), items)
        assert fragment is not None
        return orjson.dumps({"m": fragment})[len(b'{"m":'):-1]

    first = [HumanMessage("hello", id="in-1"), AIMessage("hi there ünïcode")]
    assert encoded(first) == expected(first)
    calls = []
    original = serde._default_handler
    serde._default_handler = lambda obj: calls.append(obj) or original(obj)
    second = first + [HumanMessage("more", id="in-2"), AIMessage("sure")]  # LangGraph's reducer: a new list
    assert encoded(second) == expected(second)
    assert calls == second[2:]  # only the new messages were visited

    second[1].content = "edited"  # an attribute re-assigned on a kept message is noticed
    assert b"edited" in encoded(second) and encoded(second) == expected(second)
    replaced = [second[0], AIMessage("another"), *second[2:]]  # a message replaced in the middle
    assert encoded(replaced) == expected(replaced)
    shorter = replaced[:2]  # messages removed (RemoveMessage)
    assert encoded(shorter) == expected(shorter)
    assert serde.encode_list(("thread", "messages"), []) is None
    assert serde.encode_list(("thread", "other"), ["plain", {"a": 1}]) is None  # not LangChain objects
    assert EncodingSerializer(remember_encodings=False).encode_list("k", first) is None  # CHECKPOINT_CACHE=0

    bounded = EncodingSerializer(max_lists=2)
    for n in range(5):
        bounded.encode_list(("t", n), first)
    assert len(bounded._lists) == 2  # bounded


def test_a_conversations_checkpoint_keys_share_its_users_cluster_slot():
    """The commit script stores a turn's checkpoint with its reply, so the
    library's keys for the thread must fall in the user's Cluster slot."""
    from redis.crc import key_slot

    saver = AsyncRedisSaver(redis_client=aioredis.Redis())  # no connection is made
    thread = keys.thread_id("alice", "trip")
    user_slot = key_slot(keys.lease("alice", "trip").encode())
    assert key_slot(checkpoint_format.checkpoint_key(saver, thread, "1f0-abc").encode()) == user_slot
    assert key_slot(checkpoint_format.latest_key(saver, thread).encode()) == user_slot
