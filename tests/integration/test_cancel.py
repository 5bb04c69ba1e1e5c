"""Stopping a turn: ``cancel`` from any device on any gateway, and ``send``
with ``if_busy`` (``reject``, ``interrupt``). A stopped message ends with one
``cancelled`` event on every device, the graph's state is as if it never ran,
and what was queued behind it runs -- also when the worker running it is
killed and the cancel lands while no worker runs."""

from __future__ import annotations

import asyncio
import json

import redis

from switchboard.shared import keys
from tests.support.client import new_user
from tests.support.devices import finals, phone_and_laptop
from tests.support.graphs import runs
from tests.support.wait import until

SLOW = "tests.support.graphs:slow"


def _started(cluster, user: str, conversation: str) -> bool:
    """A worker has begun an attempt at the conversation's next message."""
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        return client.hget(keys.conversation(user, conversation), "attempt_of") is not None
    finally:
        client.close()


async def test_a_cancel_from_another_gateway_stops_the_turn_and_the_queue_runs_on(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=SLOW)
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        await phone.send("c", "long", "sleep:30 a long one")
        await phone.send("c", "next", "after it")
        await until(lambda: _started(cluster, user, "c"), 15, "a worker running the turn")
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await laptop.send_raw(json.dumps({"type": "cancel", "conversation_id": "c"}))
        for device in (phone, laptop):
            await device.wait_for(lambda d=device: ("cancelled", "long") in finals(d), timeout=10)
        assert loop.time() - asked < 5  # stopped, not waited out (the graph sleeps 30 s)
        # The stopped message is not in the graph's state: the next is its first turn.
        assert (await phone.wait_reply("next"))["text"] == "reply 1 to: after it"
        await laptop.wait_reply("next")
        await asyncio.sleep(0.3)
        for device in (phone, laptop):
            assert finals(device) == [("cancelled", "long"), ("assistant", "next")]
        # Nothing runs now: a cancel says so.
        await laptop.send_raw(json.dumps({"type": "cancel", "conversation_id": "c"}))
        assert (await laptop.wait_frame("error"))["code"] == "not_running"
    finally:
        await phone.close()
        await laptop.close()


async def test_if_busy_reject_refuses_and_interrupt_stops_what_waits_and_runs_next(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=SLOW)
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        await phone.send("c", "first", "hello")
        assert (await phone.wait_reply("first"))["text"] == "reply 1 to: hello"
        await phone.send("c", "slow", "sleep:30 think hard")
        await phone.send("c", "queued", "sleep:30 and this")
        await until(lambda: _started(cluster, user, "c"), 15, "a worker running the turn")
        await laptop.send("c", "nope", "not now", if_busy="reject")
        error = await laptop.wait_frame("error", client_msg_id="nope")
        assert error["code"] == "busy"
        await laptop.send("c", "now", "forget those", if_busy="interrupt")
        await laptop.wait_frame("accepted", client_msg_id="now")
        for device in (phone, laptop):
            await device.wait_reply("now", timeout=10)
        assert (await laptop.wait_reply("now"))["text"] == "reply 2 to: forget those"
        await asyncio.sleep(0.3)
        for device in (phone, laptop):
            assert finals(device) == [("assistant", "first"), ("cancelled", "slow"), ("cancelled", "queued"),
                                       ("assistant", "now")]
        assert not any(f["type"] == "accepted" and f["client_msg_id"] == "nope" for f in laptop.frames)
        # Not busy any more: reject lets it through.
        await laptop.send("c", "later", "and now?", if_busy="reject")
        assert (await laptop.wait_reply("later"))["text"] == "reply 3 to: and now?"
    finally:
        await phone.close()
        await laptop.close()


async def test_a_cancel_while_no_worker_runs_is_kept_and_the_message_never_answered(cluster, tmp_path):
    marks = tmp_path / "marks"
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=SLOW,
                       SLOW_GRAPH_MARKS=str(marks), LEASE_TTL="1", CLAIM_IDLE="1")
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        await phone.send("c", "long", "sleep:30 streamed partly")
        await phone.send("c", "next", "then this")
        await until(lambda: "sleep:30 streamed partly" in runs(marks), 15, "the graph running it")  # the graph runs it
        cluster.kill("w")  # kill -9 mid-turn
        await laptop.send_raw(json.dumps({"type": "cancel", "conversation_id": "c", "client_msg_id": "next"}))
        error = await laptop.wait_frame("error", client_msg_id="next")
        assert error["code"] == "not_running" and "queued behind" in error["message"]
        await laptop.send_raw(json.dumps({"type": "cancel", "conversation_id": "c", "client_msg_id": "long"}))
        await asyncio.sleep(0.3)
        assert not [f for f in laptop.frames if f["type"] == "error" and f.get("client_msg_id") == "long"]
        cluster.start("worker", "w2", GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks), LEASE_TTL="1", CLAIM_IDLE="1")
        for device in (phone, laptop):
            await device.wait_reply("next", timeout=20)
        await asyncio.sleep(0.3)
        for device in (phone, laptop):
            assert finals(device) == [("cancelled", "long"), ("assistant", "next")]
        assert (await phone.wait_reply("next"))["text"] == "reply 1 to: then this"
        # The new worker never ran the cancelled message: one start, by the killed worker.
        began = runs(marks)
        assert began.count("sleep:30 streamed partly") == 1 and began.count("then this") == 1
    finally:
        await phone.close()
        await laptop.close()


async def test_a_stopped_streamed_reply_ends_with_what_was_streamed(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=SLOW)
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    words = " ".join(f"word{i}" for i in range(400))  # ~20 ms a token: seconds of streaming
    try:
        await phone.send("c", "talk", f"streamed {words}")
        await laptop.wait_for(lambda: any(e["kind"] == "delta" for e in laptop.events))
        await laptop.send_raw(json.dumps({"type": "cancel", "conversation_id": "c", "client_msg_id": "talk"}))
        for device in (phone, laptop):
            await device.wait_for(lambda d=device: ("cancelled", "talk") in finals(d), timeout=10)
        await asyncio.sleep(0.3)  # no delta may follow the final event
        for device in (phone, laptop):
            deltas = [e for e in device.events if e["kind"] == "delta"]
            [cancelled] = [e for e in device.events if e["kind"] == "cancelled"]
            assert device.events[-1] is cancelled
            assert cancelled["text"] == "".join(e["text"] for e in deltas)
            assert cancelled["text"] and f"reply 1 to: streamed {words}".startswith(cancelled["text"])
            assert len(cancelled["text"]) < len(words)
    finally:
        await phone.close()
        await laptop.close()
