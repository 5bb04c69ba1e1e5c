"""The checkpoint the worker writes is the library's own, against a real Redis:
the document equals the one the library's ``aput`` writes, field for field,
and the library reads it back; message encodings are remembered exactly."""

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

from switchboard.shared import keys
from switchboard.shared.checkpoints import setup_saver
from switchboard.shared.settings import WorkerSettings
from switchboard.worker import checkpoint_format
from switchboard.worker.checkpoint_format import EncodingSerializer
from switchboard.worker.fencing import FencedRedisSaver
from switchboard.worker.graph import build
from switchboard.worker.turns import Turns

USER = "u"
THREAD = "u1:c1"


@pytest.fixture
async def raw(clean_redis):
    client = aioredis.Redis.from_url(clean_redis)
    yield client
    await client.aclose()


@pytest.fixture
async def redis(clean_redis):
    client = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    yield client
    await client.aclose()


async def _stock(raw, **kw) -> AsyncRedisSaver:
    """A plain library saver, as another process (an admin tool) would use."""
    saver = AsyncRedisSaver(redis_client=raw, **kw)
    await saver.asetup()
    return saver


async def _worker(redis, raw, **settings) -> Turns:
    """A worker's turns, its saver built as the worker's ``serve`` builds it."""
    settings = replace(WorkerSettings(), **settings)
    ttl = {"default_ttl": settings.checkpoint_ttl, "refresh_on_read": True} if settings.checkpoint_ttl else None
    saver = FencedRedisSaver(redis_client=raw, ttl=ttl, cache_size=settings.checkpoint_cache)
    await setup_saver(saver)
    return Turns(redis, build().compile(checkpointer=saver), settings)


async def _say(turns: Turns, conversation: str, text: str) -> str:
    """Send a message (an inbound entry, as the gateway adds it), drain the
    conversation and return the reply's text."""
    redis = turns.store.redis
    entry = await redis.xadd(keys.inbound(USER), {"conv": conversation, "cmid": f"{conversation}-{text}",
                                                  "dev": "d", "text": text})
    assert await turns.drain(USER, conversation) is True
    replies = [fields["text"] for _, fields in await redis.xrange(keys.outbound(USER)) if fields["in"] == entry]
    assert len(replies) == 1
    return replies[0]


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
