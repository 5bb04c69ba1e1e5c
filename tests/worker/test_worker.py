"""The worker loop in-process on a real Redis: a notice runs its
conversation and is acknowledged and deleted; a malformed one is dropped; a
dead consumer's notice is claimed and its turn runs once."""

import asyncio
from dataclasses import replace

import pytest

from switchboard.shared import keys
from switchboard.shared.settings import RedisSettings, WorkerSettings
from switchboard.worker.worker import Worker


async def _until(predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _serving(url: str, **overrides):
    settings = replace(WorkerSettings(), redis=RedisSettings(url=url), server_id="w-test", read_block=0.2,
                       claim_idle=0.5, stream_deltas=False, **overrides)
    worker = Worker(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop=stop))
    await asyncio.wait_for(worker.ready.wait(), 30)
    return worker, stop, task


async def _replies(redis, user: str) -> list[dict]:
    return [f for _, f in await redis.xrange(keys.outbound(user)) if f["kind"] == "assistant"]


async def test_a_notice_runs_its_conversation_and_is_then_acknowledged_and_deleted(redis, clean_redis):
    worker, stop, task = await _serving(clean_redis)
    try:
        await redis.xadd(keys.inbound("ann", "c"), {"cmid": "m1", "dev": "d", "text": "hello"})
        await redis.xadd(keys.work(0), {"user": "ann", "conv": "c"})
        await _until(lambda: _has_reply(redis, "ann"))
        await _until(lambda: _work_is_empty(redis))
        assert len(await _replies(redis, "ann")) == 1
    finally:
        stop.set()
        await task


async def test_a_malformed_notice_is_acknowledged_without_running_anything(redis, clean_redis):
    worker, stop, task = await _serving(clean_redis)
    try:
        await redis.xadd(keys.work(0), {"nonsense": "1"})
        await _until(lambda: _work_is_empty(redis))
        assert await redis.keys("sb:{u:*") == []
    finally:
        stop.set()
        await task


async def test_a_dead_consumers_notice_is_claimed_and_its_turn_runs_once(redis, clean_redis):
    await redis.xgroup_create(keys.work(0), keys.WORKER_GROUP, id="0", mkstream=True)
    await redis.xadd(keys.inbound("bo", "c"), {"cmid": "m1", "dev": "d", "text": "hello"})
    await redis.xadd(keys.work(0), {"user": "bo", "conv": "c"})
    # A consumer that read the notice and died: it stays pending on "ghost".
    await redis.xreadgroup(keys.WORKER_GROUP, "ghost", {keys.work(0): ">"}, count=1)
    worker, stop, task = await _serving(clean_redis)
    try:
        await _until(lambda: _work_is_empty(redis))
        assert len(await _replies(redis, "bo")) == 1
    finally:
        stop.set()
        await task


async def _has_reply(redis, user: str) -> bool:
    return bool(await _replies(redis, user))


async def _work_is_empty(redis) -> bool:
    pending = await redis.xpending(keys.work(0), keys.WORKER_GROUP)
    return pending["pending"] == 0 and await redis.xlen(keys.work(0)) == 0
