"""Messages the graph cannot handle: bounded attempts, then turn_error and a
dead-letter entry; the conversation and everyone else go on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import redis.asyncio as aioredis

from switchboard.shared import keys
from tests.support.client import Device
from tests.support.cluster import token

SLOW = "tests.support.graphs:slow"


def _user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def _dead_letters(url: str) -> list[dict]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    entries = await client.xrange(keys.dead_letters())
    await client.aclose()
    return [fields for _, fields in entries]


async def test_a_hanging_graph_times_out_is_retried_then_dead_lettered(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW, TURN_TIMEOUT="0.5",
                       MAX_ATTEMPTS="2")
    user = _user()
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
    phone = Device(cluster.services["gw"].url, token(_user()), "phone")
    await phone.connect()
    await phone.send("c", "bad", "fail always")
    assert (await phone.wait_reply("bad"))["kind"] == "turn_error"
    [dead] = await _dead_letters(cluster.redis_url)
    assert dead["attempts"] == "3" and dead["reason"].startswith("RuntimeError")
    assert cluster.services["w"].log_text().count("attempt ") == 3
    await phone.close()


async def test_a_message_that_crashes_workers_is_given_up_after_bounded_attempts(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w0"), ("worker", "w1"), GRAPH=SLOW,
                       MAX_ATTEMPTS="2")
    victim, bystander = _user(), _user()
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
    phone = Device(cluster.services["gw"].url, token(_user()), "phone")
    await phone.connect()
    await phone.send("c", "m1", "sleep:6 long turn")
    while not (marks.exists() and any(marks.iterdir())):
        await asyncio.sleep(0.05)
    cluster.start("worker", "staying", **env)
    started = time.monotonic()
    cluster.kill("leaving", signal.SIGTERM)
    assert "handed back 1 conversations" in cluster.services["leaving"].log_text()
    reply = await phone.wait_reply("m1", timeout=15)
    assert reply["text"] == "reply 1 to: sleep:6 long turn"
    assert time.monotonic() - started < 15  # far less than CLAIM_IDLE (60 s)
    await asyncio.sleep(0.5)
    assert len(phone.replies("m1")) == 1
    await phone.close()
