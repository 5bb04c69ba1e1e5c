"""How and why the gateway ends a connection, or refuses a frame and keeps
it: heartbeat and hello timeouts, slow consumers (4008), resyncs (4009),
duplicate hellos, invalid acks, and Redis being unreachable. Real service
processes, a real Redis and real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from switchboard.gateway.delivery import choose_fanout
from switchboard.gateway.store import GatewayStore
from switchboard.shared import internal, keys
from switchboard.shared.settings import GatewaySettings, StreamSettings
from tests.support.client import Device, new_user
from tests.support.cluster import token
from tests.support.rawws import RawClient
from tests.support.wait import until as _until

SLOW = "tests.support.graphs:slow"
RETENTION = 10  # OUTBOUND_MAXLEN's minimum
SLOW_CONSUMER_AFTER = GatewaySettings().slow_consumer_after


async def _stream_ids(client: aioredis.Redis, user: str) -> list[str]:
    return [entry_id for entry_id, _ in await client.xrange(keys.outbound(user))]


async def _subscribers(client: aioredis.Redis, channel: str) -> int:
    return dict(await client.pubsub_numsub(channel)).get(channel, 0)


def _event_text(i: int, size: int) -> str:
    return f"event {i} " + os.urandom(size // 2).hex()


async def _pubsub_clients(client: aioredis.Redis) -> list[dict[str, Any]]:
    return await client.client_list(_type="pubsub")


class ScenarioNotReached(Exception):
    """The situation a test sets up did not happen (not the behaviour under test)."""


async def _scenario(wait) -> None:
    try:
        await wait
    except AssertionError as exc:
        raise ScenarioNotReached(str(exc)) from exc


def _user_for(fanout: str, fanouts: list[str]) -> str:
    while True:
        user = new_user()
        if choose_fanout(user, dict.fromkeys(fanouts, "")) == fanout:
            return user


class _Monitor:
    """Redis MONITOR in the background: every command any client sends."""

    def __init__(self, url: str):
        self.client = aioredis.Redis.from_url(url, decode_responses=True)
        self.commands: list[str] = []
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> _Monitor:
        self._monitor = self.client.monitor()
        await self._monitor.__aenter__()
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        while True:
            self.commands.append((await self._monitor.next_command())["command"])

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            await self._monitor.__aexit__(None, None, None)
        await self.client.aclose()


class _Deliveries:
    """Every delivery the fanouts publish to one gateway, seen by subscribing
    to its channel too (pub/sub sends each message to every subscriber)."""

    def __init__(self, url: str, gateway: str):
        self.client = aioredis.Redis.from_url(url)
        self.channel = keys.gateway_delivery(gateway)
        self.ids: set[str] = set()  #: ids of the events published
        self.lost = False  #: whether a target was lost
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> _Deliveries:
        self._pubsub = self.client.pubsub()
        await self._pubsub.subscribe(self.channel)
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] == "message":
                delivery = internal.decode_delivery(message["data"])
                self.ids.update(event.id for event in delivery.events)
                self.lost = self.lost or any(target.lost for target in delivery.targets)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self._pubsub.aclose()
        await self.client.aclose()


# -- heartbeat and hello --------------------------------------------------------------


async def test_a_device_that_stops_answering_pings_is_closed_and_the_others_are_not(cluster, redis_client):
    interval = 1.5  # the server pings every 1.5 s and waits as long for the pong
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW,
                       HEARTBEAT_INTERVAL=str(interval))
    url = cluster.services["gw"].url
    user = new_user()
    tablet = Device(url, token(user), "tablet")
    await tablet.connect()
    silent = RawClient(url)
    await silent.open()
    assert (await silent.hello(user, "silent"))["type"] == "welcome"

    started = time.monotonic()
    code = await silent.read_until_closed(timeout=10 * interval + 10)
    elapsed = time.monotonic() - started
    assert (code, silent.close_reason) == (1011, "keepalive ping timeout")
    assert silent.pings >= 1  # it was asked, and never answered
    assert elapsed >= interval * 0.9  # closed by the heartbeat, not at once
    silent.close()

    # The tablet answered every ping meanwhile: still connected, and served.
    assert tablet.close_code is None
    await tablet.send("c", "m1", "still there?")
    assert (await tablet.wait_reply("m1"))["text"] == "reply 1 to: still there?"
    assert tablet.event_ids() == await _stream_ids(redis_client, user)
    assert tablet.close_code is None
    await tablet.close()


async def test_no_hello_in_time_is_closed_with_4003(cluster):
    hello_timeout = 1.0
    cluster.start("gateway", "gw", HELLO_TIMEOUT=str(hello_timeout))
    url = cluster.services["gw"].url
    mute = RawClient(url)
    await mute.open()
    started = time.monotonic()
    code = await mute.read_until_closed(timeout=hello_timeout + 15)
    elapsed = time.monotonic() - started
    assert code == 4003
    assert mute.frames == []
    assert elapsed >= hello_timeout * 0.9
    mute.close()

    # A device that says hello at once is welcomed by the same gateway.
    prompt = Device(url, token(new_user()), "prompt")
    assert (await prompt.connect())["type"] == "welcome"
    await prompt.close()


# -- frames that get an error and keep the connection ------------------------------------


async def test_a_second_hello_gets_duplicate_hello_and_the_connection_goes_on(cluster, redis_client):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW)
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    welcome = await phone.connect()
    await phone.send_raw(json.dumps({"type": "hello", "token": token(user), "device_id": "phone"}))
    error = await phone.wait_frame("error", code="duplicate_hello")
    assert error["client_msg_id"] is None

    await phone.send("c", "m1", "after the second hello")
    accepted = await phone.wait_frame("accepted", client_msg_id="m1")
    reply = await phone.wait_reply("m1")
    assert reply["text"] == "reply 1 to: after the second hello"
    assert phone.close_code is None
    assert [f["type"] for f in phone.frames if f["type"] in ("welcome", "error")] == ["error"]
    assert phone.welcome is welcome  # one welcome, for the first hello
    [user_event] = [f for _, f in await redis_client.xrange(keys.outbound(user)) if f["kind"] == "user"]
    assert user_event["in"] == accepted["id"]
    assert phone.event_ids() == await _stream_ids(redis_client, user)
    await phone.close()


async def test_an_ack_beyond_what_was_sent_gets_invalid_ack_and_a_sent_id_is_stored(cluster, redis_client):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"))
    user = new_user()
    url = cluster.services["gw"].url
    phone = Device(url, token(user), "phone")
    epoch = (await phone.connect())["epoch"]
    for i in range(3):
        await phone.send("c", f"m{i}", f"message {i}")
    await phone.wait_for(lambda: len(phone.events) == 3)
    first, last = phone.event_ids()[0], phone.event_ids()[-1]

    ms, _ = last.split("-")
    beyond = f"{int(ms) + 1000}-0"
    await phone.ack(beyond)
    error = await phone.wait_frame("error", code="invalid_ack")
    assert beyond in error["message"]
    # Frames of one connection are handled in order: the refused ack stored nothing.
    assert await redis_client.hget(keys.offsets(user), "phone") is None

    await phone.ack(last)
    await phone.ack(first)  # an older id: fine too, and the offset stays
    await phone.send_raw(json.dumps({"type": "ping"}))
    await phone.wait_frame("pong")
    assert [f["code"] for f in phone.frames if f["type"] == "error"] == ["invalid_ack"]
    assert await redis_client.hget(keys.offsets(user), "phone") == f"{epoch}|{last}"
    assert phone.close_code is None
    await phone.close()

    # The stored offset is where the device resumes when it sends no last_id.
    again = Device(url, token(user), "phone")
    welcome = await again.connect()
    assert (welcome["resume_from"], welcome["recovered"]) == (last, True)
    await again.send("c", "m3", "after the reconnect")
    await again.wait_for(lambda: again.events)
    assert again.event_ids() == (await _stream_ids(redis_client, user))[3:]
    await again.close()


# -- 4008 slow consumer ---------------------------------------------------------------


async def test_a_device_that_stops_reading_is_closed_with_4008_and_resumes_exactly(cluster, redis_client):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), OUTBOX_SIZE="16", HEARTBEAT_INTERVAL="60")
    url = cluster.services["gw"].url
    gateway_log = cluster.services["gw"].log_text
    user = new_user()
    stuck = RawClient(url, rcvbuf=4096)
    await stuck.open()
    welcome = await stuck.hello(user, "stuck")
    assert welcome["type"] == "welcome"
    phone = Device(url, token(user), "phone")
    await phone.connect()

    # From here on `stuck` reads nothing: the socket's buffers fill, then its
    # outbox, and the gateway stops delivering to it.
    started = time.monotonic()
    count = 120  # 7.5 MiB: more than the socket buffers and the outbox can hold
    for i in range(count):
        await phone.send("c", f"m{i}", _event_text(i, 64 * 1024))
    await phone.wait_for(lambda: len(phone.events) == count, timeout=60)
    await _until(lambda: re.search(r"with 4008\b", gateway_log()), SLOW_CONSUMER_AFTER + 40,
                 "the gateway closes the stuck connection")
    assert time.monotonic() - started >= SLOW_CONSUMER_AFTER

    # The device reads again: what was sent, in order, then the close frame.
    assert await stuck.read_until_closed(timeout=30) == 4008
    stream = await _stream_ids(redis_client, user)
    received = [e["id"] for e in stuck.events()]
    assert 0 < len(received) < count
    assert received == stream[:len(received)]
    stuck.close()

    # The other device of the user got every event, in order, and stays connected.
    assert phone.event_ids() == stream and len(stream) == count
    assert phone.close_code is None

    # Reconnecting with last_id resumes exactly where it was cut.
    again = Device(url, token(user), "stuck")
    resumed = await again.connect(last_id=received[-1], epoch=welcome["epoch"])
    assert (resumed["recovered"], resumed["resume_from"]) == (True, received[-1])
    await again.wait_for(lambda: len(received) + len(again.events) >= count, timeout=30)
    assert received + again.event_ids() == stream
    await phone.send("c", "live", "and live again")
    await again.wait_for(lambda: again.events[-1]["client_msg_id"] == "live")
    assert received + again.event_ids() == await _stream_ids(redis_client, user)
    await again.close()
    await phone.close()


# -- 4009 resync, and a lost batch that is not one ---------------------------------


async def test_a_paused_device_whose_position_is_trimmed_is_closed_with_4009(cluster, redis_client):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), OUTBOX_SIZE="16", HEARTBEAT_INTERVAL="60",
                       OUTBOUND_MAXLEN=str(RETENTION))
    url = cluster.services["gw"].url
    store = GatewayStore(redis_client, StreamSettings(outbound_maxlen=RETENTION))
    user = new_user()
    notify = keys.notify(user)
    stuck = RawClient(url, rcvbuf=4096)
    await stuck.open()
    welcome = await stuck.hello(user, "stuck")
    await _until(lambda: _subscribers(redis_client, notify), 15, "the connection is attached to the fanout")

    # The device reads nothing; events pile up until the gateway pauses its
    # delivery (its fanout then drops the user: no connection of it is
    # attached). Each is appended once the fanout has sent the one before: a
    # fanout more than RETENTION events behind would find them trimmed and
    # have the connection resynced before it was ever paused.
    appended = 0
    async with _Deliveries(cluster.redis_url, "gw") as published:
        while await _subscribers(redis_client, notify):
            if appended >= 400:
                raise ScenarioNotReached("delivery was never paused")
            await store.accept(user, "other", "c", f"m{appended}", _event_text(appended, 32 * 1024))
            appended += 1
            [(newest, _)] = await redis_client.xrevrange(keys.outbound(user), count=1)

            async def sent_or_paused() -> bool:
                return newest in published.ids or not await _subscribers(redis_client, notify)

            await _scenario(_until(sent_or_paused, 15, f"the fanout sends {newest}", interval=0.005))
        assert not published.lost
    # Now the events after its position are trimmed, while it is paused.
    for i in range(appended, appended + RETENTION + 1):
        await store.accept(user, "other", "c", f"m{i}", f"event {i}")

    assert await stuck.read_until_closed(timeout=SLOW_CONSUMER_AFTER + 20) == 4009
    received = [e["id"] for e in stuck.events()]
    # What it was sent before the pause, from the first event on, then the close.
    assert [e["client_msg_id"] for e in stuck.events()] == [f"m{i}" for i in range(len(received))]
    assert 0 < len(received) < appended
    stuck.close()

    again = Device(url, token(user), "stuck")
    resumed = await again.connect(last_id=received[-1], epoch=welcome["epoch"])
    assert resumed["recovered"] is False
    retained = await _stream_ids(redis_client, user)
    assert len(retained) == RETENTION
    await again.wait_for(lambda: len(again.events) >= RETENTION)
    await store.accept(user, "other", "c", "live", "live one")
    await again.wait_for(lambda: again.events[-1]["client_msg_id"] == "live")
    # Everything retained at the reconnect, then the live event: nothing twice.
    assert again.event_ids() == retained + (await _stream_ids(redis_client, user))[-1:]
    await again.close()


async def test_a_lost_batch_behind_the_connection_does_not_strand_it(cluster, redis_client):
    """A connection's fanout dropped it (its events after the fanout's cursor
    were trimmed) while the connection already had more than that cursor, from
    a fanout that had stalled and come back. Nothing is missing for the
    device: it must go on receiving events, exactly, not sit on an open
    socket that never delivers again.

    How it comes about: fan-1 stalls past its liveness TTL, so the gateway
    moves the connection to fan-2, which is stalled too (but still counts as
    live). fan-1 comes back and, still holding its attachment, delivers every
    event; meanwhile retention trims what came after the position the
    connection had when it moved. When fan-2 resumes, its first read finds its
    cursor trimmed: a lost batch, whose prev is behind the connection's
    position. Then fan-1 dies."""
    cluster.start("fanout", "fan-1", FANOUT_ALIVE_TTL="3")
    cluster.start("fanout", "fan-2", FANOUT_ALIVE_TTL="120")  # stays live while stopped
    cluster.start("gateway", "gw", OUTBOUND_MAXLEN=str(RETENTION))
    store = GatewayStore(redis_client, StreamSettings(outbound_maxlen=RETENTION))
    user = _user_for("fan-1", ["fan-1", "fan-2"])
    notify = keys.notify(user)
    url = cluster.services["gw"].url
    phone = Device(url, token(user), "phone")
    await phone.connect()
    await _scenario(_until(lambda: _subscribers(redis_client, notify), 15, "phone attached to fan-1"))
    n = 0

    async def append_and_receive(device: Device) -> None:
        nonlocal n
        cmid = f"m{n}"
        await store.accept(user, "other", "c", cmid, f"event {n}")
        n += 1
        await device.wait_for(lambda: device.events and device.events[-1]["client_msg_id"] == cmid)

    await _scenario(append_and_receive(phone))
    fan1 = cluster.services["fan-1"].process
    fan2 = cluster.services["fan-2"].process
    async with _Monitor(cluster.redis_url) as monitor:
        fan2.send_signal(signal.SIGSTOP)
        fan1.send_signal(signal.SIGSTOP)
        try:
            ctl = keys.fanout_control("fan-2")
            await _scenario(_until(lambda: any(c.startswith(f"PUBLISH {ctl} ") for c in monitor.commands),
                                   20, "the gateway moves the phone to fan-2"))
        finally:
            fan1.send_signal(signal.SIGCONT)
    try:
        # fan-1 is back and still delivers to the phone, past retention.
        for _ in range(RETENTION + 2):
            await _scenario(append_and_receive(phone))
    finally:
        fan2.send_signal(signal.SIGCONT)
    # fan-2 takes the attach, finds the phone's position there trimmed, drops it.
    async def both_subscribed() -> bool:
        return await _subscribers(redis_client, notify) == 2

    await _scenario(_until(both_subscribed, 15, "fan-2 took the attach"))
    cluster.kill("fan-1", signal.SIGKILL)

    await store.accept(user, "other", "c", "after", "after fan-1 died")

    def has_after(device: Device) -> bool:
        return any(e["client_msg_id"] == "after" for e in device.events)

    tablet = Device(url, token(user), "tablet")  # a new connection of the user is served
    await tablet.connect()
    await _scenario(tablet.wait_for(lambda: has_after(tablet), timeout=15))
    # Nothing was missing for the phone: it goes on, exactly, and is not closed.
    await phone.wait_for(lambda: has_after(phone) or phone.close_code is not None, timeout=15)
    assert phone.close_code is None
    assert [e["client_msg_id"] for e in phone.events] == [f"m{i}" for i in range(n)] + ["after"]
    assert phone.event_ids()[-RETENTION:] == await _stream_ids(redis_client, user)
    await tablet.close()
    await phone.close()


# -- Redis unreachable, or the connection to it interrupted ----------------------------


async def test_deliveries_published_while_the_gateway_was_unsubscribed_still_arrive(cluster, redis_client):
    """The gateway's pub/sub connection to Redis breaks (a Redis restart, a
    network blip, a proxy's idle timeout) and is opened again. Pub/sub keeps
    nothing for absent subscribers, so whatever the fanout published in
    between is gone: the gateway must resume its connections from what they
    really have, or an accepted message never shows on a connected device."""
    cluster.start_many(("fanout", "f"), ("gateway", "gw"))
    store = GatewayStore(redis_client, StreamSettings())
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    channel = keys.gateway_delivery("gw")
    await _scenario(_until(lambda: _subscribers(redis_client, keys.notify(user)), 15, "phone attached"))
    await store.accept(user, "other", "c", "m0", "before")
    await _scenario(phone.wait_for(lambda: phone.events))
    # The gateway's subscriber: subscribed to its one delivery channel (the
    # fanout's pub/sub connection holds its control channel and the user's).
    [subscriber] = [c for c in await _pubsub_clients(redis_client) if c["sub"] == "1"]

    gateway = cluster.services["gw"].process
    async with _Monitor(cluster.redis_url) as monitor:
        gateway.send_signal(signal.SIGSTOP)
        try:
            await redis_client.client_kill_filter(_id=subscriber["id"])
            await store.accept(user, "other", "c", "m1", "while the gateway was not subscribed")
            await _scenario(_until(lambda: any(c.startswith(f"PUBLISH {channel} ") for c in monitor.commands),
                                   15, "the fanout publishes the event to the gateway"))
        finally:
            gateway.send_signal(signal.SIGCONT)
    await _scenario(_until(lambda: _subscribers(redis_client, channel), 15, "the gateway subscribes again"))

    await phone.wait_for(lambda: len(phone.events) == 2, timeout=10)
    assert phone.event_ids() == await _stream_ids(redis_client, user)
    assert phone.close_code is None
    await phone.close()


async def test_with_redis_down_hello_and_send_get_unavailable(own_redis):
    server, cluster = own_redis
    cluster.start_many(("fanout", "f"), ("gateway", "gw"))
    url = cluster.services["gw"].url
    user = new_user()
    phone = Device(url, token(user), "phone")
    await phone.connect()
    server.stop()

    newcomer = RawClient(url)
    await newcomer.open()
    error = await newcomer.hello(user, "newcomer")
    assert (error["type"], error["code"]) == ("error", "unavailable")
    assert await newcomer.read_until_closed(timeout=15) == 1011
    newcomer.close()

    await phone.send("c", "m1", "while Redis is down")
    error = await phone.wait_frame("error", code="unavailable")
    assert error["client_msg_id"] == "m1"
    await phone.send_raw(json.dumps({"type": "ping"}))
    await phone.wait_frame("pong")  # the connection stays open
    assert phone.close_code is None
    assert not [f for f in phone.frames if f["type"] == "accepted"]
    await phone.close()


async def test_after_redis_is_back_hello_and_send_succeed_at_once(own_redis):
    server, cluster = own_redis
    cluster.start_many(("fanout", "f"), ("gateway", "gw"))
    url = cluster.services["gw"].url
    user = new_user()
    phone = Device(url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m0", "before")
    await phone.wait_for(lambda: phone.events)
    server.stop()
    await phone.send("c", "m1", "while Redis is down")
    await phone.wait_frame("error", code="unavailable", client_msg_id="m1")
    server.start()

    tablet = Device(url, token(user), "tablet")
    welcome = await tablet.connect()  # the first hello after the restart
    assert welcome["recovered"] is True
    await phone.send("c", "m1", "while Redis is down")  # resent, as the error said
    accepted = await phone.wait_frame("accepted", client_msg_id="m1")
    for device in (phone, tablet):
        await device.wait_for(lambda d=device: any(e["client_msg_id"] == "m1" for e in d.events))
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    stream = await _stream_ids(client, user)
    user_events = [f for _, f in await client.xrange(keys.outbound(user)) if f["kind"] == "user"]
    assert user_events[-1]["cmid"] == "m1" and user_events[-1]["in"] == accepted["id"]
    await client.aclose()
    assert phone.event_ids() == stream and len(stream) == 2
    assert [f["code"] for f in phone.frames if f["type"] == "error"] == ["unavailable"]
    await phone.close()
    await tablet.close()
