"""How work reaches the workers: a work stream deleted under a running
worker, several work shards, conversations that run side by side on one
worker, and the turns of one conversation handed from worker to worker in
order. Real service processes and a real Redis; each check ends on the
outbound streams in Redis."""

from __future__ import annotations

import signal
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from switchboard.shared import keys
from tests.support.client import Device, new_user
from tests.support.cluster import token
from tests.support.wait import until as _until

SLOW = "tests.support.graphs:slow"


async def _stream(client: aioredis.Redis, user: str) -> list[tuple[str, dict[str, str]]]:
    return await client.xrange(keys.outbound(user))


def _replies(stream: list[tuple[str, dict[str, str]]]) -> list[tuple[str, str, str]]:
    """(event id, client_msg_id, text) of each reply in the outbound stream, in order."""
    return [(entry_id, f["cmid"], f["text"]) for entry_id, f in stream if f["kind"] in ("assistant", "turn_error")]


def _marks(directory: Path) -> list[tuple[int, str]]:
    """(worker pid, message text) of every turn the slow graph started."""
    if not directory.exists():
        return []
    found = []
    for path in directory.iterdir():
        pid = int(path.name.split("-", 1)[0])
        found += [(pid, text) for text in path.read_text().splitlines() if text]
    return found


async def test_a_deleted_work_stream_is_recreated_and_messages_are_still_answered(cluster, redis_client):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW)
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m1", "before")
    await phone.wait_reply("m1")

    await redis_client.delete(keys.work(0))  # e.g. lost with Redis data, or an operator's mistake

    async def group_exists() -> bool:
        try:
            groups = await redis_client.xinfo_groups(keys.work(0))
        except ResponseError:  # no such key
            return False
        return any(g["name"] == keys.WORKER_GROUP for g in groups)

    # Only the worker creates the group: it met NOGROUP on its next read.
    await _until(group_exists, 20, "the worker recreates the work stream's group")
    await phone.send("c", "m2", "after")
    reply = await phone.wait_reply("m2", timeout=30)
    assert reply["text"] == "reply 2 to: after"  # the conversation itself is intact
    assert cluster.services["w"].process.poll() is None
    stream = await _stream(redis_client, user)
    assert [(cmid, text) for _, cmid, text in _replies(stream)] == [("m1", "reply 1 to: before"),
                                                                   ("m2", "reply 2 to: after")]
    assert phone.event_ids() == [entry_id for entry_id, _ in stream]
    await phone.close()


async def test_with_four_work_shards_every_message_is_answered_once(cluster, redis_client):
    shards = 4
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW,
                       WORK_SHARDS=str(shards))
    users: dict[int, str] = {}
    while len(users) < shards:  # one user on each shard
        user = new_user()
        users.setdefault(keys.work_shard(user, shards), user)
    url = cluster.services["gw"].url
    devices = {user: Device(url, token(user), "phone") for user in users.values()}
    for device in devices.values():
        await device.connect()
    per_user = 3
    for i in range(per_user):
        for device in devices.values():
            await device.send(f"conv-{i % 2}", f"m{i}", f"message {i}")
    for device in devices.values():
        for i in range(per_user):
            await device.wait_reply(f"m{i}", timeout=30)

    for user, device in devices.items():
        stream = await _stream(redis_client, user)
        replies = _replies(stream)
        assert sorted(cmid for _, cmid, _ in replies) == [f"m{i}" for i in range(per_user)], user
        assert all(text == f"reply {i // 2 + 1} to: message {i}" for _, cmid, text in replies
                   for i in [int(cmid[1:])])
        assert device.event_ids() == [entry_id for entry_id, _ in stream]
    # Each user's notices went to the user's own shard, and every shard was
    # used: one per conversation with nothing waiting (m0, m1), and m2's only
    # if m0 was answered before it came.
    for shard, user in users.items():
        info = await redis_client.xinfo_stream(keys.work(shard))
        assert 2 <= info["entries-added"] <= per_user, (shard, info)
        assert info["length"] == 0  # done notices are deleted
    for device in devices.values():
        await device.close()


async def test_a_slow_conversation_does_not_hold_up_others_on_the_same_worker(cluster, redis_client, tmp_path):
    marks = tmp_path / "marks"
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW,
                       SLOW_GRAPH_MARKS=str(marks))
    url = cluster.services["gw"].url
    alice, bob = new_user(), new_user()
    phone = Device(url, token(alice), "phone")
    laptop = Device(url, token(bob), "laptop")
    await phone.connect()
    await laptop.connect()
    await phone.send("a", "slow", "sleep:5 a long think")
    await _until(lambda: any(text.startswith("sleep:5") for _, text in _marks(marks)), 20,
                 "the slow turn starts")
    await phone.send("b", "quick", "a quick one")
    await laptop.send("c", "other", "another user's")

    await phone.wait_reply("quick")
    assert not phone.replies("slow")  # B's reply came while A's turn was still running
    await laptop.wait_reply("other")
    assert not phone.replies("slow")
    await phone.wait_reply("slow", timeout=30)

    stream = await _stream(redis_client, alice)
    replies = {cmid: entry_id for entry_id, cmid, _ in _replies(stream)}
    order = [entry_id for entry_id, _ in stream]
    assert order.index(replies["quick"]) < order.index(replies["slow"])
    assert phone.event_ids() == order
    assert [cmid for _, cmid, _ in _replies(await _stream(redis_client, bob))] == ["other"]
    await phone.close()
    await laptop.close()


async def test_turns_of_one_conversation_stay_in_order_when_a_worker_dies_midway(cluster, redis_client, tmp_path):
    marks = tmp_path / "marks"
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w1"), ("worker", "w2"), GRAPH=SLOW,
                       SLOW_GRAPH_MARKS=str(marks))
    workers = {cluster.services[name].process.pid: name for name in ("w1", "w2")}
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    count, cut = 10, 4
    texts = [f"sleep:0.2 message {i}" if i % 3 == 0 else f"message {i}" for i in range(count)]
    texts[cut] = f"sleep:2 message {cut}"  # the turn the kill cuts short
    for i, text in enumerate(texts):
        await phone.send("c", f"m{i}", text)

    started = await _until(lambda: [pid for pid, text in _marks(marks) if text == texts[cut]], 30,
                           f"turn {cut} starts")
    victim = workers[started[0]]
    assert cluster.kill(victim, signal.SIGKILL)  # mid-turn: its lease and notices are left behind
    for i in range(count):
        await phone.wait_reply(f"m{i}", timeout=40)

    stream = await _stream(redis_client, user)
    replies = _replies(stream)
    # Once each, in inbound order, and each turn saw exactly the turns before it.
    assert [(cmid, text) for _, cmid, text in replies] == [
        (f"m{i}", f"reply {i + 1} to: {texts[i]}") for i in range(count)]
    # Both workers ran turns of it: the cut turn was started by one and run again by the other.
    ran = _marks(marks)
    assert {pid for pid, _ in ran} == set(workers)
    assert {pid for pid, text in ran if text == texts[cut]} == set(workers)
    assert phone.event_ids() == [entry_id for entry_id, _ in stream]
    await phone.close()
