"""Failures of service processes: kill -9 and SIGTERM, with exact outcomes."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import redis.asyncio as aioredis
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.redis.aio import AsyncRedisSaver

from switchboard.shared import keys
from tests.support import graphs
from tests.support.client import Device, new_user
from tests.support.cluster import token

SLOW = "tests.support.graphs:slow"


async def _wait_path(directory: Path, timeout: float = 15.0, count: int = 1) -> list[Path]:
    """The turn marks in ``directory``, once there are ``count`` of them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if directory.exists() and len(found := list(directory.iterdir())) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} turn(s) did not start within {timeout} s")


def _ran_on(marks: Path) -> set[int]:
    """The pids of the workers that started turns (a mark is ``<pid>-...``)."""
    return {int(mark.name.split("-")[0]) for mark in marks.iterdir()}


async def _outbound(redis_url: str, user: str) -> list[tuple[str, dict[str, str]]]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return await client.xrange(keys.outbound(user))
    finally:
        await client.aclose()


async def _has_the_stream(device: Device, redis_url: str, user: str) -> list[tuple[str, str]]:
    """The device has had exactly the user's outbound stream in Redis (call
    it once the reply to a last message is in: anything extra would have come
    before it); returns the stream's (kind, client_msg_id)s."""
    stream = await _outbound(redis_url, user)
    assert device.event_ids() == [entry_id for entry_id, _ in stream]
    return [(fields["kind"], fields["cmid"]) for _, fields in stream]


async def test_worker_killed_mid_turn_gives_exactly_one_reply(cluster, tmp_path):
    marks = tmp_path / "marks"
    cluster.start("fanout")
    cluster.start("gateway", "gw")
    cluster.start("worker", "doomed", GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks))
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m1", "sleep:3 think hard")
    await phone.wait_frame("accepted", client_msg_id="m1")
    await _wait_path(marks)  # the turn is running in "doomed"
    cluster.kill("doomed", signal.SIGKILL)
    cluster.start("worker", "rescuer", GRAPH=SLOW)

    reply = await phone.wait_reply("m1", timeout=30)
    assert reply["kind"] == "assistant" and reply["text"] == "reply 1 to: sleep:3 think hard"
    await phone.send("c", "m2", "and then?")
    await phone.wait_reply("m2")
    assert await _has_the_stream(phone, cluster.redis_url, user) == [
        ("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2")]
    assert phone.replies("m2")[0]["text"] == "reply 2 to: and then?"
    await phone.close()


async def test_turn_checkpointed_but_not_committed_is_not_run_again(cluster, tmp_path):
    """A worker died after LangGraph wrote the checkpoint, before the reply was
    committed: the next worker must publish the checkpointed reply, not run
    the graph a second time (which would record the turn twice)."""
    cluster.start("fanout")
    cluster.start("gateway", "gw")
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m1", "remember me")
    accepted = await phone.wait_frame("accepted", client_msg_id="m1")

    # Play the dead worker: count the attempt as a worker does before running,
    # then run the turn with the same message id and saver.
    client = aioredis.Redis.from_url(cluster.redis_url)
    await client.hset(keys.conversation(user, "c"), mapping={"attempt_of": accepted["id"], "attempts": 1})
    saver = AsyncRedisSaver(redis_client=client)
    await saver.asetup()
    graph = graphs.slow.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": keys.thread_id(user, "c")}}
    await graph.ainvoke({"messages": [HumanMessage("remember me", id=f"in-{accepted['id']}")]}, config,
                        durability="exit")

    marks = tmp_path / "marks"
    cluster.start("worker", "next", GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks))
    reply = await phone.wait_reply("m1")
    assert reply["text"] == "reply 1 to: remember me"
    assert not marks.exists(), "the graph ran again for a checkpointed turn"
    await phone.send("c", "m2", "second")
    assert (await phone.wait_reply("m2"))["text"] == "reply 2 to: second"
    state = await graph.aget_state(config)
    assert [m.type for m in state.values["messages"]] == ["human", "ai", "human", "ai"]
    await client.aclose()
    await phone.close()


async def test_a_repeated_work_notice_writes_no_second_reply(cluster):
    cluster.start("fanout")
    cluster.start("gateway", "gw")
    cluster.start("worker", GRAPH=SLOW)
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m1", "once")
    accepted = await phone.wait_frame("accepted", client_msg_id="m1")
    await phone.wait_reply("m1")
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    for _ in range(3):  # e.g. a gateway re-sent it, or a claim raced a slow worker
        await client.xadd(keys.work(0), {"user": user, "conv": "c", "in": accepted["id"]})
    await phone.send("c", "m2", "twice?")
    await phone.wait_reply("m2")
    # Notices are deleted once done: when none is left, every notice has had
    # its drain, so a second reply would be in the stream by now.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while await client.xlen(keys.work(0)):
        assert loop.time() < deadline, "work notices were still there after 15 s"
        await asyncio.sleep(0.05)
    assert await _has_the_stream(phone, cluster.redis_url, user) == [
        ("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2")]
    await client.aclose()
    await phone.close()


async def test_a_failing_graph_gives_turn_error_and_the_conversation_goes_on(cluster):
    cluster.start("fanout")
    cluster.start("gateway", "gw")
    cluster.start("worker", GRAPH=SLOW)
    phone = Device(cluster.services["gw"].url, token(new_user()), "phone")
    await phone.connect()
    await phone.send("c", "bad", "fail now")
    error = await phone.wait_reply("bad")
    assert error["kind"] == "turn_error" and "RuntimeError" in error["text"]
    await phone.send("c", "good", "are you ok?")
    reply = await phone.wait_reply("good")
    assert reply["kind"] == "assistant" and reply["text"].startswith("reply ")
    await phone.close()


async def test_turns_of_one_conversation_run_in_order_across_workers(cluster, tmp_path):
    marks = tmp_path / "marks"
    cluster.start("fanout")
    cluster.start("gateway", "gw")
    cluster.start("worker", "w1", GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks))
    cluster.start("worker", "w2", GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks))
    names = {cluster.services[name].process.pid: name for name in ("w1", "w2")}
    phone = Device(cluster.services["gw"].url, token(new_user()), "phone")
    await phone.connect()
    for i in range(8):
        await phone.send("c", f"m{i}", f"sleep:0.{i % 3 + 3} message {i}")
    # The worker holding the conversation's lease runs its turns one after
    # another; once three have started it dies, and the other worker goes on.
    await _wait_path(marks, count=3)
    [first] = _ran_on(marks)
    cluster.kill(names[first], signal.SIGKILL)
    for i in range(8):
        await phone.wait_reply(f"m{i}", timeout=30)
    assert _ran_on(marks) == set(names)  # both workers ran turns of it
    replies = [e for e in phone.events if e["kind"] == "assistant"]
    assert [e["client_msg_id"] for e in replies] == [f"m{i}" for i in range(8)]
    # Each turn saw exactly the turns before it.
    assert [e["text"].split(" to:")[0] for e in replies] == [f"reply {i + 1}" for i in range(8)]
    await phone.close()


async def test_sigterm_lets_the_running_turn_finish(cluster, tmp_path):
    marks = tmp_path / "marks"
    cluster.start("fanout")
    cluster.start("gateway", "gw")
    cluster.start("worker", "leaving", GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks))
    phone = Device(cluster.services["gw"].url, token(new_user()), "phone")
    await phone.connect()
    await phone.send("c", "m1", "sleep:1.5 finishing touch")
    await _wait_path(marks)
    cluster.kill("leaving", signal.SIGTERM)  # waits for the process to exit
    assert cluster.services["leaving"].process.returncode == 0
    reply = await phone.wait_reply("m1", timeout=5)
    assert reply["text"] == "reply 1 to: sleep:1.5 finishing touch"
    await phone.close()


async def test_fanout_killed_and_replaced_delivery_continues_exactly(cluster):
    cluster.start("fanout", "fan-1")
    cluster.start("gateway", "gw")
    cluster.start("worker")
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m1", "before")
    await phone.wait_reply("m1")
    cluster.kill("fan-1", signal.SIGKILL)
    await phone.send("c", "m2", "while no fanout runs")
    await phone.wait_frame("accepted", client_msg_id="m2")
    cluster.start("fanout", "fan-2")
    await phone.wait_reply("m2", timeout=20)
    await phone.send("c", "m3", "after")
    await phone.wait_reply("m3")
    assert await _has_the_stream(phone, cluster.redis_url, user) == [
        ("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2"), ("user", "m3"), ("assistant", "m3")]
    ids = phone.event_ids()
    assert len(ids) == len(set(ids)) == 6
    assert [(e["kind"], e["client_msg_id"]) for e in phone.events] == [
        ("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2"), ("user", "m3"), ("assistant", "m3")]
    assert phone.close_code is None  # the device never noticed
    await phone.close()
    # The killed fanout never said goodbye: the live one forgets it once its
    # liveness key has expired, so the members set does not grow with every pod that died.
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while (members := await client.smembers(keys.fanout_members())) != {"fan-2"}:  # SERVER_ID is the name
            assert loop.time() < deadline, f"fanout members: {members}"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def test_gateway_killed_device_resumes_on_another_gateway(cluster):
    cluster.start("fanout")
    cluster.start("worker")
    cluster.start("gateway", "gw-1")
    cluster.start("gateway", "gw-2")
    user = new_user()
    phone = Device(cluster.services["gw-1"].url, token(user), "phone")
    tablet = Device(cluster.services["gw-2"].url, token(user), "tablet")
    await phone.connect()
    await tablet.connect()
    await phone.send("c", "m1", "one")
    await phone.wait_reply("m1")
    cluster.kill("gw-1", signal.SIGKILL)
    await phone.wait_for(lambda: phone.close_code is not None or (phone._reader and phone._reader.done()))
    await tablet.send("c", "m2", "two")
    await tablet.wait_reply("m2")
    await phone.connect(last_id=phone.event_ids()[-1], epoch=phone.welcome["epoch"],
                        url=cluster.services["gw-2"].url)
    assert phone.welcome["recovered"] is True
    await phone.wait_reply("m2")
    await tablet.send("c", "m3", "three")
    await phone.wait_reply("m3")
    await tablet.wait_reply("m3")
    kinds = await _has_the_stream(phone, cluster.redis_url, user)
    assert kinds == [("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2"), ("user", "m3"),
                     ("assistant", "m3")]
    assert await _has_the_stream(tablet, cluster.redis_url, user) == kinds
    await phone.close()
    await tablet.close()


async def test_a_worker_paused_past_its_lease_writes_no_second_reply(cluster, tmp_path):
    marks = tmp_path / "marks"
    cluster.start("fanout")
    cluster.start("gateway", "gw")
    cluster.start("worker", "sleepy", GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks), SHUTDOWN_GRACE="30")
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m1", "sleep:2 slow answer")
    await _wait_path(marks)
    sleepy = cluster.services["sleepy"].process
    sleepy.send_signal(signal.SIGSTOP)  # a long GC pause, a frozen VM...
    try:
        cluster.start("worker", "rescuer", GRAPH=SLOW)
        await phone.wait_reply("m1", timeout=30)
    finally:
        sleepy.send_signal(signal.SIGCONT)
    # The paused worker wakes up: stopping it lets its running turn finish
    # (SHUTDOWN_GRACE is long), so once it has exited, whatever that turn
    # could write is in Redis. Its reply is not: the stream holds one, the
    # rescuer's, and the conversation is past m1.
    assert cluster.kill("sleepy", signal.SIGTERM, 60.0)
    stream = await _outbound(cluster.redis_url, user)
    assert [(f["kind"], f["cmid"]) for _, f in stream] == [("user", "m1"), ("assistant", "m1")]
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    conversation = await client.hgetall(keys.conversation(user, "c"))
    await client.aclose()
    assert conversation.get("done") == stream[0][1]["in"] == stream[1][1]["in"]
    await phone.send("c", "m2", "still there?")
    await phone.wait_reply("m2")
    assert await _has_the_stream(phone, cluster.redis_url, user) == [
        ("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2")]
    # Nor did its checkpoint: the thread's history is a line, not a fork.
    client = aioredis.Redis.from_url(cluster.redis_url)
    saver = AsyncRedisSaver(redis_client=client)
    await saver.asetup()
    config = {"configurable": {"thread_id": keys.thread_id(user, "c")}}
    parents = [t.parent_config["configurable"]["checkpoint_id"] if t.parent_config else None
               async for t in saver.alist(config)]
    assert parents and len(parents) == len(set(parents)), f"two checkpoints share a parent: {parents}"
    await client.aclose()
    await phone.close()


async def test_gateway_sigterm_closes_with_going_away_and_devices_resume_elsewhere(cluster):
    cluster.start_many(("fanout", "fan"), ("worker", "w"), ("gateway", "gw-1"), ("gateway", "gw-2"))
    phone = Device(cluster.services["gw-1"].url, token(new_user()), "phone")
    await phone.connect()
    await phone.send("c", "m1", "before the deploy")
    await phone.wait_reply("m1")
    cluster.kill("gw-1", signal.SIGTERM)
    assert cluster.services["gw-1"].process.returncode == 0
    await phone.wait_for(lambda: phone.close_code is not None)
    assert phone.close_code == 1001  # "going away": reconnect
    await phone.connect(last_id=phone.event_ids()[-1], epoch=phone.welcome["epoch"],
                        url=cluster.services["gw-2"].url)
    assert phone.welcome["recovered"] is True
    await phone.send("c", "m2", "after the deploy")
    reply = await phone.wait_reply("m2")
    assert "Turn 2" in reply["text"]
    await phone.close()
