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
