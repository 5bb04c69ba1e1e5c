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

    from switchboard.shared.checkpoints import SwitchboardRedisSaver, setup_saver

    clients = [aioredis.Redis.from_url(clean_redis) for _ in range(6)]
    savers = [SwitchboardRedisSaver(redis_client=c) for c in clients]
    await asyncio.gather(*(setup_saver(s) for s in savers))  # none raises "Index already exists"
    assert all(s.checkpoints_index is not None and s._key_registry is not None for s in savers)
    for client in clients:
        await client.aclose()


async def _checkpoint(saver, thread: str) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    await saver.aput(config, empty_checkpoint(), {"source": "input", "step": 0}, {})


async def test_a_thread_search_matches_the_thread_exactly_not_another_users_by_case(redis_url):
    """RediSearch tags fold case by default: ``{u:casey}/c`` found ``{u:CASEY}/c``
    (another user's checkpoints, counted by pruning, listed by alist)."""
    import uuid

    import redis.asyncio as aioredis
    from langgraph.checkpoint.redis.aio import AsyncRedisSaver

    from switchboard.shared.checkpoints import SwitchboardRedisSaver, setup_saver

    client = aioredis.Redis.from_url(redis_url)
    prefix = f"casetest{uuid.uuid4().hex[:6]}"
    names = {"checkpoint_prefix": prefix, "checkpoint_write_prefix": f"{prefix}_write"}
    # An index made the library's way first (an older Switchboard, or a stock saver) ...
    stock = AsyncRedisSaver(redis_client=client, **names)
    await stock.asetup()
    await _checkpoint(stock, "{u:casey}/c")
    await _checkpoint(stock, "{u:CASEY}/c")
    await _checkpoint(stock, "{u:CASEY}/c")
    folded = [c async for c in stock.alist({"configurable": {"thread_id": "{u:casey}/c"}})]
    assert len(folded) == 3  # the defect: casey sees CASEY's two

    # ... is made again, case-sensitive, by the first Switchboard process.
    ours = SwitchboardRedisSaver(redis_client=client, **names)
    await setup_saver(ours)

    async def listed(saver, thread: str) -> list:
        for _ in range(100):  # the new index takes in the existing documents in the background
            found = [c async for c in saver.alist({"configurable": {"thread_id": thread}})]
            if len(found) == {"{u:casey}/c": 1, "{u:CASEY}/c": 2}[thread]:
                return found
            await asyncio.sleep(0.05)
        return found

    import asyncio

    assert [c.config["configurable"]["thread_id"] for c in await listed(ours, "{u:casey}/c")] == ["{u:casey}/c"]
    assert len(await listed(ours, "{u:CASEY}/c")) == 2
    # The documents are the library's: a stock saver reads them, now exactly too.
    assert len([c async for c in stock.alist({"configurable": {"thread_id": "{u:casey}/c"}})]) == 1
    await client.aclose()


async def test_pruning_keeps_the_newest_of_a_thread_by_its_index_without_a_search(redis_url):
    """``prune_thread``: the thread's newest ``keep`` checkpoints stay, with
    their pending writes; older ones go with theirs and their registry;
    another thread (the same user id but for case) is untouched. Found by the
    thread's index (``keys.thread_checkpoints``), which ``aput`` keeps: one
    script, no FT.SEARCH, however many go; a stock saver still reads what is
    left. ``keep`` 0 (a clear) deletes every checkpoint and the latest
    pointer. As the worker's ACL user, which may do all of it."""
    import uuid

    import redis.asyncio as aioredis
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.redis.aio import AsyncRedisSaver

    from switchboard.shared import keys
    from switchboard.shared.acl import read_password
    from switchboard.shared.checkpoints import SwitchboardRedisSaver, setup_saver
    from switchboard.shared.redis_url import split_credentials
    from tests.support.cluster import tier_env

    worker = tier_env(redis_url)["worker"]
    client = aioredis.Redis.from_url(split_credentials(redis_url)[0], username=worker["REDIS_USERNAME"],
                                     password=read_password(worker["REDIS_PASSWORD_FILE"]))
    admin = aioredis.Redis.from_url(redis_url)
    saver = SwitchboardRedisSaver(redis_client=client)
    await setup_saver(saver)

    async def chain(thread: str, n: int) -> list[str]:
        ids = []
        for step in range(n):
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            stored = await saver.aput(config, empty_checkpoint(), {"source": "loop", "step": step}, {})
            await saver.aput_writes(stored, [("messages", f"pending {step}")], task_id=f"task-{step}")
            ids.append(stored["configurable"]["checkpoint_id"])
        return ids

    async def listed(s, thread: str) -> list[str]:
        return [c.config["configurable"]["checkpoint_id"] async for c in s.alist({"configurable": {"thread_id": thread}})]

    async def calls() -> dict[str, int]:
        stats = await admin.info("commandstats")
        return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("FT.SEARCH", "evalsha")}

    user = f"pat-{uuid.uuid4().hex[:6]}"
    thread, other = f"{{u:{user}}}/c", f"{{u:{user.upper()}}}/c"
    ids = await chain(thread, 8)
    others = await chain(other, 3)
    assert await admin.zcard(keys.thread_checkpoints(thread)) == 8  # each listed as it was written
    registry = [saver._key_registry.make_write_keys_zset_key(thread, "__empty__", cid) for cid in ids]
    assert await admin.exists(*registry) == 8  # the library's registry of each one's writes

    assert await saver.prune_thread(other, keep=10) == 0  # (Redis learns the script)
    before = await calls()
    assert await saver.prune_thread(thread, keep=3) == 5
    after = await calls()
    assert (after["FT.SEARCH"] - before["FT.SEARCH"], after["evalsha"] - before["evalsha"]) == (0, 1)

    assert sorted(await listed(saver, thread)) == sorted(ids[-3:])
    assert sorted(await listed(saver, other)) == sorted(others)
    writes = [k async for k in admin.scan_iter(match=f"checkpoint_write:{{u:{user}}}*")]
    writes += [k async for k in admin.scan_iter(match=f"checkpoint_write:{{u:{user.upper()}}}*")]
    assert len(writes) == 3 + 3  # the kept checkpoints' writes only
    for cid in ids[-3:]:
        kept = await saver.aget_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": cid}})
        assert [w[2] for w in kept.pending_writes] == [f"pending {ids.index(cid)}"]
    assert await admin.exists(*registry[:5]) == 0 and await admin.exists(*registry[5:]) == 3
    assert await admin.zcard(keys.thread_checkpoints(thread)) == 3
    stock = AsyncRedisSaver(redis_client=admin)
    assert sorted(await listed(stock, thread)) == sorted(ids[-3:])
    assert await saver.prune_thread(thread, keep=3) == 0  # nothing more to do

    assert await saver.prune_thread(thread, keep=0) == 3  # a clear
    assert await listed(saver, thread) == [] and await saver.aget_tuple({"configurable": {"thread_id": thread}}) is None
    assert await admin.exists(keys.thread_checkpoints(thread), *registry) == 0
    assert sorted(await listed(saver, other)) == sorted(others)
    await client.aclose()
    await admin.aclose()
