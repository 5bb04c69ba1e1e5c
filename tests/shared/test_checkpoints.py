import importlib
import traceback

from langchain_core.messages import HumanMessage

from switchboard.shared.checkpoints import CachingSerializer


def test_class_lookups_are_cached_and_failures_do_not_accumulate(monkeypatch):
    calls = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: calls.append(name) or real(name, *a))
    serde = CachingSerializer()
    missing = {"id": ["no_such_package_here", "messages", "Thing"]}
    depths = []
    for _ in range(50):
        try:
            serde._constructor_class(missing)
        except ValueError as exc:
            depths.append(len(traceback.extract_tb(exc.__traceback__)))
    assert len(depths) == 50 and len(set(depths)) == 1  # a fresh, short traceback every time
    assert calls.count("no_such_package_here.messages") == 1  # searched once
    found = {"id": ["langchain_core", "messages", "HumanMessage"]}
    assert serde._constructor_class(found) is serde._constructor_class(found) is HumanMessage


def test_messages_still_round_trip():
    serde = CachingSerializer()
    message = HumanMessage("hello", id="in-1-0")
    for _ in range(3):
        assert serde.loads_typed(serde.dumps_typed({"m": [message]}))["m"][0] == message


async def test_many_processes_can_set_up_the_checkpointer_at_once(clean_redis):
    """Pods that start together race to create the RediSearch indexes."""
    import asyncio

    import redis.asyncio as aioredis
    from langgraph.checkpoint.redis.aio import AsyncRedisSaver

    from switchboard.shared.checkpoints import setup_saver

    clients = [aioredis.Redis.from_url(clean_redis) for _ in range(6)]
    savers = [AsyncRedisSaver(redis_client=c) for c in clients]
    await asyncio.gather(*(setup_saver(s) for s in savers))  # none raises "Index already exists"
    assert all(s.checkpoints_index is not None and s._key_registry is not None for s in savers)
    for client in clients:
        await client.aclose()


def test_a_growing_message_list_is_encoded_by_appending_and_stays_exact():
    import orjson
    from langchain_core.messages import AIMessage

    serde = CachingSerializer()
    plain = CachingSerializer(remember_encodings=False)

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
    assert CachingSerializer(remember_encodings=False).encode_list("k", first) is None  # CHECKPOINT_CACHE=0

    bounded = CachingSerializer(max_lists=2)
    for n in range(5):
        bounded.encode_list(("t", n), first)
    assert len(bounded._lists) == 2  # bounded
