"""The core pipeline end to end: real Redis, real service processes, real sockets."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from switchboard.shared import keys, streamids

from tests.support.client import Device, new_user
from tests.support.cluster import token


async def _xrange(redis_url: str, key: str, start: str = "-") -> list[tuple[str, dict[str, str]]]:
    """The entries of a stream in Redis (after ``start`` if it is an id)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return await client.xrange(key, start if start == "-" else f"({start}")
    finally:
        await client.aclose()


async def _stream_ids(redis_url: str, user: str, after: str = "-") -> list[str]:
    return [entry_id for entry_id, _ in await _xrange(redis_url, keys.outbound(user), after)]


def _connection_event_ids(device: Device) -> list[str]:
    """The events of the device's current connection."""
    return [f["id"] for f in device.frames if f["type"] == "event"]


@pytest.fixture
def system(cluster):
    """Two gateways, one worker, one fanout."""
    cluster.start_many(("fanout", "fanout-a"), ("worker", "worker-a"), ("gateway", "gw-a"), ("gateway", "gw-b"))
    return cluster


async def test_two_devices_on_two_gateways_see_the_same_events(system):
    user = new_user()
    gw_a, gw_b = system.services["gw-a"], system.services["gw-b"]
    phone = Device(gw_a.url, token(user), "phone")
    laptop = Device(gw_b.url, token(user), "laptop")
    await phone.connect()
    await laptop.connect()
    assert phone.welcome["epoch"] == laptop.welcome["epoch"]

    await phone.send("trip", "m1", "Planning a sailing trip to Norway")
    accepted = await phone.wait_frame("accepted", client_msg_id="m1")
    await phone.wait_reply("m1")
    await laptop.wait_reply("m1")
    await laptop.send("trip", "m2", "What should I pack for sailing?")
    await phone.wait_reply("m2")
    await laptop.wait_reply("m2")

    assert phone.event_ids() == laptop.event_ids() == await _stream_ids(system.redis_url, user)
    kinds = [(e["kind"], e["client_msg_id"]) for e in phone.events]
    assert kinds == [("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2")]
    user_event = phone.events[0]
    assert user_event["device_id"] == "phone" and user_event["text"] == "Planning a sailing trip to Norway"
    # `accepted` names the message's inbound entry, and the message's events
    # in the outbound stream name that entry; answered, it has left the
    # inbound stream.
    assert await _xrange(system.redis_url, keys.inbound(user, "trip")) == []
    outbound = await _xrange(system.redis_url, keys.outbound(user))
    assert [f["in"] for _, f in outbound[:2]] == [accepted["id"], accepted["id"]]
    second_reply = phone.replies("m2")[0]["text"]
    assert "Turn 2" in second_reply and "sailing" in second_reply  # the graph remembers
    await phone.close()
    await laptop.close()


async def test_reconnect_with_last_id_gets_exactly_the_missed_events(system):
    user = new_user()
    gw_a, gw_b = system.services["gw-a"], system.services["gw-b"]
    phone = Device(gw_a.url, token(user), "phone")
    laptop = Device(gw_b.url, token(user), "laptop")
    await phone.connect()
    await laptop.connect()
    await laptop.send("c", "m1", "first message")
    await phone.wait_reply("m1")
    seen = phone.event_ids()
    epoch = phone.welcome["epoch"]
    await phone.drop()  # no close frame

    for i in range(2, 5):
        await laptop.send("c", f"m{i}", f"message {i}")
        await laptop.wait_reply(f"m{i}")
    missed = laptop.event_ids()[len(seen):]
    assert len(missed) == 6

    # Reconnect to the *other* gateway with the last id the phone saw.
    welcome = await phone.connect(last_id=seen[-1], epoch=epoch, url=gw_b.url)
    assert welcome["recovered"] is True and welcome["resume_from"] == seen[-1]
    await phone.wait_for(lambda: len(phone.frames) >= len(missed))

    # Live events continue after the replay; once the last one is in, the
    # connection has had exactly the stream after `last_id`: the missed
    # events, then the live ones, nothing more.
    await laptop.send("c", "m5", "after the reconnect")
    await phone.wait_reply("m5")
    await laptop.wait_reply("m5")
    after = await _stream_ids(system.redis_url, user, seen[-1])
    assert after[:len(missed)] == missed and len(after) == len(missed) + 2
    assert _connection_event_ids(phone) == after
    assert phone.event_ids() == laptop.event_ids() == await _stream_ids(system.redis_url, user)
    await phone.close()
    await laptop.close()


async def test_reconnect_without_last_id_resumes_from_the_acked_offset(system):
    user = new_user()
    url = system.services["gw-a"].url
    phone = Device(url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m1", "hello there")
    await phone.wait_reply("m1")
    acked = phone.events[-1]["id"]
    await phone.ack(acked)
    await phone.send("c", "m2", "and again")
    await phone.wait_reply("m2")
    after_ack = [e["id"] for e in phone.events if streamids.later(e["id"], acked)]
    # The ack is stored before the connection goes.
    stored = f"{phone.welcome['epoch']}|{acked}"
    client = aioredis.Redis.from_url(system.redis_url, decode_responses=True)
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while await client.hget(keys.offsets(user), "phone") != stored:
            assert asyncio.get_running_loop().time() < deadline, "the ack was not stored within 15 s"
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    await phone.close()

    phone.events = []
    welcome = await phone.connect()
    assert welcome["resume_from"] == acked and welcome["recovered"] is True
    await phone.wait_for(lambda: len(phone.events) >= 2)
    assert phone.event_ids()[:2] == after_ack
    # A last message: once its reply is in, the connection has had exactly
    # the stream after the acked offset.
    await phone.send("c", "m3", "the last one")
    await phone.wait_reply("m3")
    assert phone.event_ids() == await _stream_ids(system.redis_url, user, acked)
    assert len(phone.event_ids()) == len(after_ack) + 2
    await phone.close()


async def test_resent_client_msg_id_starts_no_second_turn(system):
    user = new_user()
    gw_a, gw_b = system.services["gw-a"], system.services["gw-b"]
    phone = Device(gw_a.url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "same-id", "only once please")
    first = await phone.wait_frame("accepted", client_msg_id="same-id")
    await phone.send("c", "same-id", "only once please")
    await phone.wait_for(lambda: len([f for f in phone.frames if f["type"] == "accepted"]) == 2)
    await phone.wait_reply("same-id")
    await phone.close()

    # The `accepted` was "lost": resend after reconnecting to another gateway.
    other = Device(gw_b.url, token(user), "phone")
    await other.connect()
    await other.send("c", "same-id", "only once please")
    again = await other.wait_frame("accepted", client_msg_id="same-id")
    assert again["id"] == first["id"]
    await other.send("c", "next", "a new message")
    await other.wait_reply("next")
    everything = other.events
    assert [e["client_msg_id"] for e in everything if e["kind"] == "user"].count("same-id") == 1
    assert len([e for e in everything if e["kind"] == "assistant" and e["client_msg_id"] == "same-id"]) == 1
    assert "Turn 2" in other.replies("next")[0]["text"]  # one turn, not two, was recorded
    await other.close()


async def test_other_users_never_receive_these_events(system):
    alice, bob = new_user(), new_user()
    url = system.services["gw-a"].url
    a = Device(url, token(alice), "phone")
    b = Device(system.services["gw-b"].url, token(bob), "phone")
    await a.connect()
    await b.connect()
    await a.send("c", "a1", "secret of alice")
    await a.wait_reply("a1")
    await b.send("c", "b1", "bob speaking")
    await b.wait_reply("b1")
    # Last messages on both sides, alice's first: once bob has the reply to
    # his, each device has had its own user's stream and nothing else.
    await a.send("c", "a2", "alice again")
    await a.wait_reply("a2")
    await b.send("c", "b2", "bob again")
    await b.wait_reply("b2")
    assert all("alice" not in e["text"] for e in b.events)
    assert {e["client_msg_id"] for e in b.events} == {"b1", "b2"}
    assert {e["client_msg_id"] for e in a.events} == {"a1", "a2"}
    assert b.event_ids() == await _stream_ids(system.redis_url, bob)
    assert a.event_ids() == await _stream_ids(system.redis_url, alice)
    await a.close()
    await b.close()


async def test_bad_input_gets_typed_errors_and_the_server_keeps_serving(system):
    url = system.services["gw-a"].url
    user = new_user()
    good = Device(url, token(user), "good")
    await good.connect()

    # A bad token: error frame, then close 4001.
    from websockets.asyncio.client import connect
    import json

    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "token": "not-a-jwt", "device_id": "x"}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == "unauthorized"
        await ws.wait_closed()
        assert ws.close_code == 4001
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token(user, ttl=-60), "device_id": "x"}))
        error = json.loads(await ws.recv())
        assert error["code"] == "unauthorized" and "expired" in error["message"]
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "send", "conversation_id": "c", "client_msg_id": "x", "text": "hi"}))
        error = json.loads(await ws.recv())
        assert error["code"] == "hello_required"
        await ws.wait_closed()
        assert ws.close_code == 4002

    # A non-JSON frame, an unknown type, an invalid field, an oversized frame:
    # each gets its error and the connection stays usable.
    noisy = Device(url, token(user), "noisy")
    await noisy.connect()
    await noisy.send_raw("this is not json")
    assert (await noisy.wait_frame("error"))["code"] == "bad_frame"
    await noisy.send_raw(json.dumps({"type": "teleport"}))
    await noisy.send_raw(json.dumps({"type": "send", "conversation_id": "bad id {x}", "client_msg_id": "k1",
                                     "text": "x"}))
    await noisy.send_raw("x" * (1024 * 1024 + 10))
    await noisy.wait_for(lambda: len([f for f in noisy.frames if f["type"] == "error"]) == 4)
    codes = [f["code"] for f in noisy.frames if f["type"] == "error"]
    assert codes == ["bad_frame", "bad_frame", "bad_frame", "too_large"]
    assert [f.get("client_msg_id") for f in noisy.frames if f["type"] == "error"][2] == "k1"
    await noisy.send("c", "after-errors", "still here?")
    await noisy.wait_reply("after-errors")

    # Others were served all along.
    await good.send("c2", "g1", "fine")
    await good.wait_reply("g1")
    await good.close()
    await noisy.close()


async def test_history_returns_the_conversation(system):
    user = new_user()
    phone = Device(system.services["gw-a"].url, token(user), "phone")
    await phone.connect()
    await phone.send("h", "m1", "tell me about owls")
    await phone.wait_reply("m1")
    await phone.send("h", "m2", "and their eyes")
    await phone.wait_reply("m2")
    import json

    await phone.send_raw(json.dumps({"type": "history", "conversation_id": "h", "limit": 3}))
    history = await phone.wait_frame("history")
    roles = [m["role"] for m in history["messages"]]
    assert roles == ["assistant", "user", "assistant"]
    assert history["messages"][1]["text"] == "and their eyes"
    await phone.send_raw(json.dumps({"type": "history", "conversation_id": "never-used"}))
    error = await phone.wait_frame("error")
    assert error["code"] == "unknown_conversation"
    await phone.close()


async def test_answered_work_notices_are_acknowledged_and_deleted(system):
    """The acker acknowledges every notice a turn covered (many per round
    trip); nothing is left pending for a claimer to redo."""
    devices = [Device(system.services["gw-a"].url, token(new_user()), "phone") for _ in range(5)]
    for device in devices:
        await device.connect()
    for round_ in range(3):
        for device in devices:
            await device.send("c", f"m{round_}", f"message {round_}")
        for device in devices:
            await device.wait_reply(f"m{round_}")
    client = aioredis.Redis.from_url(system.redis_url)
    try:
        for _ in range(50):
            pending = (await client.xpending(keys.work(0), keys.WORKER_GROUP))["pending"]
            length = await client.xlen(keys.work(0))
            if pending == 0 and length == 0:
                break
            await asyncio.sleep(0.1)
        assert (pending, length) == (0, 0)
    finally:
        await client.aclose()
    for device in devices:
        await device.close()
