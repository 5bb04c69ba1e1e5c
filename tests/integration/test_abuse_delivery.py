"""Cost isolation in delivery (issue #10): one user's large replay, a device
that never reads, and many devices of one user must not cost anyone else
their delivery. Each attack runs while a second, well-behaved user on the
same gateway is measured (:class:`~tests.support.bystander.Bystander`), and
asserts that the attack itself was handled. Real service processes, a real
Redis and real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from pathlib import Path

import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from switchboard.gateway.store import GatewayStore
from switchboard.shared import keys
from switchboard.shared.settings import GatewaySettings, StreamSettings
from tests.support.rawws import RawClient
from tests.support.bystander import Bystander
from tests.support.client import Device, new_user
from tests.support.cluster import token
from tests.support.wait import until

SLOW = "tests.support.graphs:slow"
TABLETS = 1
#: Lines a gateway or fanout logs when Redis dropped its pub/sub subscription.
SUBSCRIPTION_LOST = re.compile(r"subscription lost|subscription restored")


def _text(i: int, size: int) -> str:
    """``size`` characters that do not compress (random hex)."""
    return f"m{i} " + os.urandom(size // 2).hex()


async def _stream_ids(client: aioredis.Redis, user: str) -> list[str]:
    return [entry_id for entry_id, _ in await client.xrange(keys.outbound(user))]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


_EVENT_ID = re.compile(r'^\{"type":"event","id":"([0-9]+-[0-9]+)"')


class _Sink:
    """A device that reads every frame and keeps only each event's id, taken
    from the frame's head (so that the test process spends its time on the
    bystanders it measures, not on parsing megabytes of JSON)."""

    def __init__(self, url: str, user: str, device: str):
        self.url, self.user, self.device = url, user, device
        self.ids: list[str] = []
        self.ws = None
        self._task: asyncio.Task | None = None

    async def open(self) -> None:
        # The client offers permessage-deflate, as browsers do: whether it is
        # used is the gateway's choice.
        self.ws = await connect(self.url, max_size=None)
        await self.ws.send(json.dumps({"type": "hello", "token": token(self.user), "device_id": self.device}))
        await self.ws.recv()  # welcome
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in self.ws:
                match = _EVENT_ID.match(data[:80])
                if match:
                    self.ids.append(match[1])

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self._task


async def _produce(client: aioredis.Redis, user: str, count: int, size: int) -> None:
    """Append ``count`` messages of ``size`` characters to ``user``'s streams
    through the gateway's own accept script, one at a time: the attack's
    events, produced without a WebSocket client in this process (masking and
    encoding megabytes here would stall the bystander measured here too)."""
    store = GatewayStore(client, StreamSettings(work_shards=1))
    await store.load()
    for i in range(count):
        await store.accept(user, "attacker", "c", f"m{i}", _text(i, size))


# -- attack 1: a large replay ------------------------------------------------------


async def test_a_large_replay_reaches_the_new_device_exactly_and_costs_the_others_nothing(cluster, redis_client):
    """40 events of ~0.5 MiB and their replies (~40 MiB) replayed to a new
    device: read in byte-bounded, paced batches, no delivery message near
    Redis's 32 MB pub/sub output limit, so no subscription is dropped and
    nothing is re-attached, and two bystanders on the same gateway notice
    nothing. (Before the bounds, one 40 MB message per gateway made Redis
    drop the gateway's subscription, again at every re-attach.)"""
    # Texts of 0.5 MiB: an operator raised MAX_TEXT_LENGTH (default 100 000).
    cluster.start_many(("fanout", "f"), ("worker", "w"), ("gateway", "gw"), GRAPH=SLOW, MAX_TEXT_LENGTH="0")
    gw = cluster.services["gw"]
    user = new_user()
    phone = Device(gw.url, token(user), "phone")
    await phone.connect()
    count = 40
    for i in range(count):
        await phone.send(f"c{i}", f"m{i}", _text(i, 512 * 1024))  # one conversation each: small checkpoints
    await phone.wait_for(lambda: len(phone.events) == 2 * count, timeout=60)
    stream = await _stream_ids(redis_client, user)
    assert len(stream) == 2 * count

    async with Bystander(gw.url, token(new_user()), probe="ping") as pinger, \
            Bystander(gw.url, token(new_user()), probe="turn") as talker:
        tablets = [_Sink(gw.url, user, f"tablet-{n}") for n in range(TABLETS)]
        for tablet in tablets:
            await tablet.open()  # a new device: the replay window holds all 80 events
        await until(lambda: all(len(t.ids) >= 2 * count for t in tablets), 30, "the replays arrive")
        await asyncio.sleep(0.5)  # anything repeated would arrive by now
    for tablet in tablets:
        assert tablet.ids == stream  # every event, once, in order
        assert tablet.close_code is None
        await tablet.close()
    assert not SUBSCRIPTION_LOST.findall(gw.log_text()), "Redis dropped the gateway's delivery subscription"
    assert not SUBSCRIPTION_LOST.findall(cluster.services["f"].log_text())
    assert "re-attaching" not in gw.log_text()
    pinger.check()
    talker.check()
    await phone.close()


# -- attack 4a: a connection that never reads -------------------------------------------


async def test_a_connection_that_never_reads_holds_at_most_its_byte_bound(cluster, redis_client):
    """80 events of 1 MB for a device that never reads: its outbox stops at
    OUTBOX_BYTES (8 MiB), not at OUTBOX_SIZE frames (which would be all of
    them, 80 MB), so the gateway's memory stays bounded; the connection is
    paused, then closed 4008; a bystander notices nothing."""
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), SLOW_CONSUMER_AFTER="3", HEARTBEAT_INTERVAL="60")
    gw = cluster.services["gw"]
    user = new_user()
    stuck = RawClient(gw.url, rcvbuf=4096)
    await stuck.open()
    assert (await stuck.hello(user, "stuck"))["type"] == "welcome"
    phone = _Sink(gw.url, user, "phone")
    await phone.open()
    await asyncio.sleep(0.5)
    before = _rss_kib(gw.process.pid)
    count = 80
    async with Bystander(gw.url, token(new_user()), probe="ping") as pinger:
        await _produce(redis_client, user, count, 1_000_000)
        await until(lambda: len(phone.ids) == count, 30, "the reading device gets every event")
        peak = _rss_kib(gw.process.pid)
        await until(lambda: re.search(r"with 4008\b", gw.log_text()), 20, "the gateway closes the stuck connection")
    grown_mib = (peak - before) / 1024
    print(f"gateway RSS {before / 1024:.0f} MiB -> {peak / 1024:.0f} MiB (+{grown_mib:.0f} MiB) "
          f"for {count} MB sent to a device that never reads")
    # OUTBOX_BYTES (8 MiB) + the transport buffer (about one write) + the
    # delivery being worked on; without the byte bound all 80 MB stay queued.
    assert grown_mib < 40, f"gateway RSS grew by {grown_mib:.0f} MiB"
    assert phone.ids == await _stream_ids(redis_client, user)
    pinger.check()
    stuck.close()
    await phone.close()


# -- attack 5: many devices of one user ------------------------------------------------


async def test_many_devices_of_one_user_do_not_slow_another_user(cluster, redis_client):
    """10 messages at the longest text allowed (MAX_TEXT_LENGTH) to every
    device one user may have (MAX_DEVICES_PER_USER), the defaults: the
    gateway encodes each event once and, with compression off by default,
    writes it without deflating it per connection; a bystander's ping stays
    within its bound. (The attack as first found -- 1 MB messages to 200
    devices -- is refused by those two limits.) The devices run in a process
    of their own (:mod:`tests.support.sinks`), so that reading them does not
    stall this process, where the bystander is measured."""
    defaults = GatewaySettings()
    devices, count = defaults.max_devices_per_user, 10
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), MAX_DEVICES_PER_USER=str(devices))
    gw = cluster.services["gw"]
    user = new_user()
    sinks = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.sinks", gw.url, token(user), str(devices), str(count), "60",
        stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]))
    try:
        assert (await asyncio.wait_for(sinks.stdout.readline(), 30)).strip() == b"ready"
        async with Bystander(gw.url, token(new_user()), probe="ping") as pinger:
            await _produce(redis_client, user, count, defaults.quotas.max_text_length)
            received = json.loads(await asyncio.wait_for(sinks.stdout.readline(), 90))
    finally:
        with contextlib.suppress(ProcessLookupError):
            sinks.kill()
        await sinks.wait()
    stream = await _stream_ids(redis_client, user)
    assert len(stream) == count
    assert all(ids == stream for ids in received), "a device missed an event (or was sent compressed frames)"
    pinger.check()
