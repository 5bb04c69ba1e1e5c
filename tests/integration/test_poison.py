"""Messages the graph cannot handle: bounded attempts, then turn_error and a
dead-letter entry; the conversation and everyone else go on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import redis.asyncio as aioredis

from switchboard.shared import keys
from tests.support.client import Device, new_user
from tests.support.cluster import token

SLOW = "tests.support.graphs:slow"


async def _dead_letters(url: str) -> list[dict]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    entries = await client.xrange(keys.dead_letters())
    await client.aclose()
    return [fields for _, fields in entries]


async def _redis(url: str, command: str, *args) -> object:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return await getattr(client, command)(*args)
    finally:
        await client.aclose()


async def test_a_hanging_graph_times_out_is_retried_then_dead_lettered(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW, TURN_TIMEOUT="0.5",
                       MAX_ATTEMPTS="2")
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "hang", "sleep:30 never finishes")
    error = await phone.wait_reply("hang", timeout=15)
    assert error["kind"] == "turn_error" and "did not answer" in error["text"]
    await phone.send("c", "ok", "quick one")
    assert (await phone.wait_reply("ok"))["kind"] == "assistant"
    [dead] = await _dead_letters(cluster.redis_url)
    assert dead["user"] == user and dead["cmid"] == "hang" and dead["attempts"] == "2"
    assert "TURN_TIMEOUT" in dead["reason"]
    await phone.close()


async def test_a_raising_graph_is_retried_then_dead_lettered(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW, MAX_ATTEMPTS="3")
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "bad", "fail always")
    accepted = await phone.wait_frame("accepted", client_msg_id="bad")
    error = await phone.wait_reply("bad")
    assert error["kind"] == "turn_error"
    [dead] = await _dead_letters(cluster.redis_url)
    assert dead["attempts"] == "3" and dead["reason"].startswith("RuntimeError")
    assert (dead["user"], dead["conv"], dead["entry"], dead["cmid"], dead["text"], dead["worker"]) == (
        user, "c", accepted["id"], "bad", "fail always", "w")
    # The turn_error is the message's one committed reply: the conversation
    # is past the message, and no attempt at it is counted any more.
    conversation = await _redis(cluster.redis_url, "hgetall", keys.conversation(user, "c"))
    assert conversation.get("done") == accepted["id"]
    assert "attempt_of" not in conversation and "attempts" not in conversation
    outbound = await _redis(cluster.redis_url, "xrange", keys.outbound(user))
    assert [(f["kind"], f["cmid"], f["in"]) for _, f in outbound] == [
        ("user", "bad", accepted["id"]), ("turn_error", "bad", accepted["id"])]
    await phone.close()


async def test_a_message_that_crashes_workers_is_given_up_after_bounded_attempts(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w0"), ("worker", "w1"), GRAPH=SLOW,
                       MAX_ATTEMPTS="2")
    victim, bystander = new_user(), new_user()
    phone = Device(cluster.services["gw"].url, token(victim), "phone")
    other = Device(cluster.services["gw"].url, token(bystander), "phone")
    await phone.connect()
    await other.connect()
    await phone.send("c", "poison", "crash the worker")
    await other.send("c", "o1", "hello, anyone?")
    assert (await other.wait_reply("o1"))["kind"] == "assistant"

    # A supervisor (Kubernetes, here the test) restarts workers as they die.
    crashes = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not phone.replies("poison"):
        assert loop.time() < deadline, cluster.logs()
        for name, service in list(cluster.services.items()):
            if service.kind == "worker" and service.process.poll() is not None and not name.endswith("-done"):
                crashes += 1
                cluster.services[f"{name}-done"] = cluster.services.pop(name)
                cluster.start("worker", f"w{crashes + 1}", GRAPH=SLOW, MAX_ATTEMPTS="2")
        await asyncio.sleep(0.2)
    error = phone.replies("poison")[0]
    assert error["kind"] == "turn_error" and "could not process" in error["text"]
    assert crashes == 2  # exactly MAX_ATTEMPTS workers died on it, no more
    [dead] = await _dead_letters(cluster.redis_url)
    assert dead["cmid"] == "poison" and "stopped during each of 2 attempts" in dead["reason"]
    await phone.send("c", "after", "and now?")
    assert (await phone.wait_reply("after"))["kind"] == "assistant"
    await other.send("c", "o2", "still fine")
    await other.wait_reply("o2")
    assert len(phone.replies("poison")) == 1

    out = subprocess.run([sys.executable, "-m", "switchboard.cli", "deadletters"], capture_output=True, text=True,
                         env=dict(os.environ, REDIS_URL=cluster.redis_url), check=True).stdout
    assert json.loads(out.strip().splitlines()[-1])["cmid"] == "poison"
    await phone.close()
    await other.close()


async def test_sigterm_hands_unfinished_turns_back_at_once(cluster, tmp_path):
    marks = tmp_path / "marks"
    # CLAIM_IDLE is long: only an explicit hand-back lets the other worker start soon.
    env = dict(GRAPH=SLOW, CLAIM_IDLE="60", SHUTDOWN_GRACE="0.5", SLOW_GRAPH_MARKS=str(marks))
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "leaving"), **env)
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    # Long enough that the leaving worker cannot finish it before it stops,
    # even on a loaded machine: starting the other worker takes seconds, and
    # the leaving one first lets its blocking read (READ_BLOCK) end.
    await phone.send("c", "m1", "sleep:12 long turn")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (marks.exists() and any(marks.iterdir())):
        assert loop.time() < deadline, "the turn did not start within 30 s"
        await asyncio.sleep(0.05)
    cluster.start("worker", "staying", **env)
    leaving, staying = cluster.services["leaving"].process.pid, cluster.services["staying"].process.pid
    assert cluster.kill("leaving", signal.SIGTERM)
    # Handed back: nothing is left pending on the worker that left (else it
    # would wait there for CLAIM_IDLE).
    assert await _redis(cluster.redis_url, "xpending_range", keys.work(0), keys.WORKER_GROUP, "-", "+", 10,
                        "leaving") == []
    # The other worker ran the turn again, long before CLAIM_IDLE (60 s)
    # could have handed it over.
    reply = await phone.wait_reply("m1", timeout=40)
    assert reply["text"] == "reply 1 to: sleep:12 long turn"
    assert {int(mark.name.split("-")[0]) for mark in marks.iterdir()} == {leaving, staying}
    # A last message: once its reply is in, the device has had every event
    # of the stream, and m1 one reply only.
    await phone.send("c", "m2", "and then?")
    await phone.wait_reply("m2")
    outbound = await _redis(cluster.redis_url, "xrange", keys.outbound(user))
    assert phone.event_ids() == [entry_id for entry_id, _ in outbound]
    assert [(e["kind"], e["client_msg_id"]) for e in phone.events] == [
        ("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2")]
    await phone.close()


async def test_sigterm_starts_no_more_turns_and_hands_back_what_was_taken_ahead(cluster, tmp_path):
    """A worker with one slot has taken ten conversations (read-ahead), one of
    them with two messages. On SIGTERM it finishes the running turn only --
    well inside its long grace period -- and the other worker answers every
    remaining message exactly once, long before CLAIM_IDLE."""
    marks = tmp_path / "marks"
    env = dict(GRAPH=SLOW, CLAIM_IDLE="60", SLOW_GRAPH_MARKS=str(marks))
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "leaving"),
                       WORKER_CONCURRENCY="1", SHUTDOWN_GRACE="30", **env)
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    sent = [("c0", "m0", "sleep:3 first of two"), ("c0", "m0b", "sleep:3 second of two")]
    sent += [(f"c{i}", f"m{i}", f"sleep:3 turn {i}") for i in range(1, 10)]
    for conversation, cmid, text in sent:
        await phone.send(conversation, cmid, text)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (marks.exists() and any(marks.iterdir())):
        assert loop.time() < deadline, "no turn started within 30 s"
        await asyncio.sleep(0.02)
    cluster.start("worker", "staying", **env)
    leaving, staying = cluster.services["leaving"].process.pid, cluster.services["staying"].process.pid
    before = _turns_run(marks)[leaving]
    started = loop.time()
    assert cluster.kill("leaving", signal.SIGTERM)
    stopped_after = loop.time() - started
    # What was left of one 3 s turn was running; the conversations waiting
    # for the slot did not run here (their turns would take 30 s more).
    assert stopped_after < 6.0, f"the worker took {stopped_after:.1f} s to stop"
    assert await _redis(cluster.redis_url, "xpending_range", keys.work(0), keys.WORKER_GROUP, "-", "+", 50,
                        "leaving") == []
    for _, cmid, _ in sent:
        await phone.wait_reply(cmid, timeout=30)
    ran = _turns_run(marks)
    assert ran[leaving] == before, "no turn started on the worker after SIGTERM"
    assert sorted(ran[leaving] + ran[staying]) == sorted(text for _, _, text in sent)
    replies = [(e["conversation_id"], e["client_msg_id"]) for e in phone.events if e["kind"] == "assistant"]
    assert sorted(replies) == sorted((c, m) for c, m, _ in sent), "one reply to each message"
    await phone.close()


def _turns_run(marks) -> dict[int, list[str]]:
    """pid -> the texts whose turns started in that process (the slow graph's marks)."""
    ran: dict[int, list[str]] = {}
    for mark in marks.iterdir():
        ran.setdefault(int(mark.name.split("-")[0]), []).extend(mark.read_text().splitlines())
    return ran
