"""Attacks on admission, each against real processes while a second,
well-behaved user is measured (tests/support/bystander.py): half-sent large
messages before ``hello``, too many devices of one user over two gateways
(and a gateway killed with -9), too many connections from one address, a
frame flood, and browser origins. Real Redis, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import zlib
from collections import Counter

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode

from tests.support.bystander import Bystander
from tests.support.client import Device, new_user
from tests.support.cluster import process_memory, token
from tests.support.rawws import RawClient


_status = process_memory


async def _close_code(client: RawClient, timeout: float) -> int | None:
    """The close code the server sends within ``timeout`` (None: not closed in time)."""
    with contextlib.suppress(TimeoutError):
        return await client.read_until_closed(timeout)
    return None


def _deflated_fragment(size: int) -> bytes:
    """The bytes of a first, unfinished fragment of a text message of
    ``size`` zero bytes, compressed as permessage-deflate does (RFC 7692: raw
    deflate, sync-flushed; the 00 00 ff ff tail stays on a non-final
    fragment) -- made once, so the test's own loop does not compress 400 MB."""
    encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = encoder.compress(bytes(size)) + encoder.flush(zlib.Z_SYNC_FLUSH)
    # RFC 6455 5.2, by hand (websockets' serializer refuses RSV1 without the
    # extension object): FIN 0, RSV1 1, opcode text; masked, with a zero mask.
    assert len(data) < 1 << 16
    return bytes([0x40 | Opcode.TEXT.value, 0x80 | 126]) + struct.pack("!H", len(data)) + bytes(4) + data


async def _refused(url: str, hello: dict | None) -> tuple[str | None, int | None]:
    """Open a connection (send ``hello`` if given); the ``error`` code and the
    close code the gateway answers with."""
    async with connect(url, max_size=None) as ws:
        if hello is not None:
            with contextlib.suppress(ConnectionClosed):  # refused per address: closed before hello
                await ws.send(json.dumps({"type": "hello", **hello}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        await asyncio.wait_for(ws.wait_closed(), 10)
        return (first.get("code") if first["type"] == "error" else first["type"]), ws.close_code


async def _try(device: Device) -> tuple[str, int | None]:
    """``("welcome", None)``, or the error code and close code of a refusal."""
    try:
        await device.connect()
        return "welcome", None
    except (AssertionError, ConnectionClosed) as exc:
        await device.ws.wait_closed()
        code = "too_many_connections" if "too_many_connections" in str(exc) else str(exc)
        return code, device.ws.close_code


# -- (a) before hello -------------------------------------------------------------------------


async def test_half_sent_messages_before_hello_are_cut_at_the_small_limit(cluster):
    """200 sockets that never say hello, each sending the first fragment of a
    message as large as the gateway would take (2 x MAX_MESSAGE_SIZE of zeros:
    a few KB compressed). Each is closed 1009 at HELLO_MAX_SIZE; 50 that stay
    under it are held until HELLO_TIMEOUT; the gateway's peak RSS barely moves."""
    hello_max = 16 * 1024
    # With compression on (COMPRESSION=1; off by default) the attack is
    # cheapest for the attacker: the limit must hold on the decompressed size.
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), HELLO_TIMEOUT="20", COMPRESSION="1",
                       HELLO_MAX_SIZE=str(hello_max), MAX_UNAUTHENTICATED_PER_IP="1000")
    gw = cluster.services["gw"]
    big, small = 200, 50
    async with Bystander(gw.url, token(new_user()), probe="ping") as bystander:
        before = _status(gw.process.pid)
        sockets = [RawClient(gw.url, deflate=True) for _ in range(big + small)]
        too_big = _deflated_fragment(2 * (1 << 20) - 1)  # MAX_MESSAGE_SIZE is 1 MiB
        assert len(too_big) < 4096
        # In batches of 10 over a second or two: the handshakes (not what is
        # measured here) come at a rate a bystander can share a loaded core with.
        for i in range(0, len(sockets), 10):
            await asyncio.gather(*(s.open() for s in sockets[i:i + 10]))
            await asyncio.sleep(0.03)
        for i in range(0, big, 10):
            await asyncio.gather(*(s.send_bytes(too_big) for s in sockets[i:i + 10]))
            await asyncio.sleep(0.03)
        await asyncio.gather(*(s.send_text(b"x" * (hello_max - 1024), fin=False) for s in sockets[big:]))
        codes = await asyncio.gather(*(_close_code(s, 5) for s in sockets[:big]))
        await asyncio.sleep(0.5)
        after = _status(gw.process.pid)
        held = [s.protocol.close_rcvd is None for s in sockets[big:]]
        for s in sockets:
            s.close()
    growth = after["VmHWM"] - before["VmRSS"]
    print(f"gateway RSS {before['VmRSS'] / 2**20:.1f} MB -> peak {after['VmHWM'] / 2**20:.1f} MB "
          f"(+{growth / 2**20:.1f} MB for {big + small} sockets before hello)")
    assert codes.count(1009) == big, f"closed: {Counter(codes)}"
    assert all(held), "a message under HELLO_MAX_SIZE must not close the socket"
    assert growth < 40 * 2**20
    bystander.check()


async def test_after_hello_the_full_frame_size_applies(cluster):
    """The small limit is raised once hello is accepted: a client that waits
    for welcome may send a large message at once."""
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), HELLO_MAX_SIZE=str(16 * 1024))
    url = cluster.services["gw"].url
    async with Bystander(url, token(new_user()), probe="ping") as bystander:
        phone = Device(url, token(new_user()), "phone")
        await phone.connect()
        await phone.send_raw(json.dumps({"type": "ping", "pad": "x" * 500_000}))
        await phone.wait_frame("pong")
        assert phone.close_code is None
        await phone.close()
        await asyncio.sleep(0.5)  # (the bystander probes a while more)
    bystander.check()


# -- (b) devices per user ------------------------------------------------------------------


async def test_devices_per_user_are_capped_over_all_gateways_and_a_killed_gateway_frees_its_slots(cluster):
    cap, ttl = 4, 3.0
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"),
                       MAX_DEVICES_PER_USER=str(cap), ADMISSION_TTL=str(ttl))
    gw1, gw2 = cluster.services["gw1"].url, cluster.services["gw2"].url
    user = new_user()
    async with Bystander(gw1, token(new_user()), probe="ping") as bystander:
        devices = [Device(gw1 if i % 2 == 0 else gw2, token(user), f"d{i}") for i in range(cap)]
        for d in devices:
            await d.connect()
        for url in (gw1, gw2):  # one more device, on either gateway: refused
            assert await _refused(url, {"token": token(user), "device_id": "extra"}) == ("too_many_connections", 4005)

        # A reconnect of a device is never refused: it takes its slot over,
        # and its old connection (on the other gateway) is closed.
        again = Device(gw2, token(user), "d0")
        assert (await again.connect())["type"] == "welcome"
        await devices[0].wait_for(lambda: devices[0].close_code is not None, timeout=ttl + 5)
        assert devices[0].close_code == 4005

        # gw2 (d0 again, d1, d3) dies without a word: its slots expire within ADMISSION_TTL.
        killed = time.monotonic()
        cluster.kill("gw2")
        late = Device(gw1, token(user), "late")
        freed = None
        for _ in range(int((ttl + 5) / 0.25)):
            if await _try(late) == ("welcome", None):
                freed = time.monotonic() - killed
                break
            await asyncio.sleep(0.25)
        assert freed is not None and freed <= ttl + 1.0, f"slots freed after {freed} s"
        print(f"the slots of a killed gateway were free again after {freed:.2f} s (ADMISSION_TTL={ttl})")
        for d in (late, devices[2]):
            assert d.close_code is None
            await d.close()
    bystander.check()


async def test_a_device_reconnecting_to_its_gateway_replaces_its_old_connection_at_once(cluster):
    """A half-open old connection of a device (the phone changed networks)
    must not hold the device's slot, nor linger: it is closed 4005 as soon
    as the device says hello again -- not only at the next renewal (10 s by
    default)."""
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), MAX_DEVICES_PER_USER="1")
    url = cluster.services["gw"].url
    user = new_user()
    async with Bystander(url, token(new_user()), probe="ping") as bystander:
        old, new = Device(url, token(user), "phone"), Device(url, token(user), "phone")
        await old.connect()
        await new.connect()
        await old.wait_for(lambda: old.close_code is not None, timeout=2)
        assert old.close_code == 4005
        await new.send_raw('{"type": "ping"}')
        await new.wait_frame("pong")
        assert new.close_code is None
        await new.close()
        await asyncio.sleep(0.5)  # (the bystander probes a while more)
    bystander.check()


# -- (c) per address -------------------------------------------------------------------------


async def test_connections_per_ip_are_capped_over_all_gateways_and_before_hello_per_gateway(cluster):
    """Everything here comes from 127.0.0.1, the bystander included."""
    total, before_hello = 6, 2
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"),
                       MAX_CONNECTIONS_PER_IP=str(total), MAX_UNAUTHENTICATED_PER_IP=str(before_hello),
                       HELLO_TIMEOUT="20")
    gw1, gw2 = cluster.services["gw1"].url, cluster.services["gw2"].url
    async with Bystander(gw1, token(new_user()), probe="ping") as bystander:
        # Before hello, per gateway: two sockets that say nothing are held, a third is refused.
        mute = [RawClient(gw1, deflate=True) for _ in range(before_hello)]
        for s in mute:
            await s.open()
        assert await _refused(gw1, None) == ("too_many_connections", 4005)
        other = Device(gw2, token(new_user()), "d")
        assert await _try(other) == ("welcome", None)  # the other gateway counts its own
        await other.close()
        for s in mute:
            s.close()

        # In total, over both gateways: the bystander and five more.
        devices = []
        deadline = time.monotonic() + 10
        while len(devices) < total - 1 and time.monotonic() < deadline:
            d = Device(gw1 if len(devices) % 2 else gw2, token(new_user()), "d")
            if await _try(d) == ("welcome", None):
                devices.append(d)
            else:
                await asyncio.sleep(0.1)  # the mute sockets' slots are still being released
        assert len(devices) == total - 1
        for url in (gw1, gw2):
            assert await _refused(url, {"token": token(new_user()), "device_id": "d"}) == (
                "too_many_connections", 4005)
        await devices[0].close()
        d = Device(gw2, token(new_user()), "d")
        started = time.monotonic()  # a closed connection frees its slot as soon as its gateway sees the close
        while await _try(d) != ("welcome", None):
            assert time.monotonic() - started < 2, "the closed connection's slot was not freed"
            await asyncio.sleep(0.05)
        for d in [*devices[1:], d]:
            await d.close()
        await asyncio.sleep(0.5)  # (the bystander probes a while more)
    bystander.check()


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_cap(cluster):
    """With TRUSTED_PROXIES, X-Forwarded-For names the client: clients behind
    one proxy do not share its address's cap, and a client that is not the
    proxy cannot pick its address with the header."""
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), MAX_CONNECTIONS_PER_IP="1",
                       TRUSTED_PROXIES="127.0.0.0/8")
    url = cluster.services["gw"].url

    async def hello(forwarded: str) -> tuple[str | None, int | None]:
        async with connect(url, additional_headers={"X-Forwarded-For": forwarded}) as ws:
            with contextlib.suppress(ConnectionClosed):  # refused per address: closed before hello
                await ws.send(json.dumps({"type": "hello", "token": token(new_user()), "device_id": "d"}))
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if first["type"] == "welcome":
                return "welcome", None
            await asyncio.wait_for(ws.wait_closed(), 10)
            return first["code"], ws.close_code

    # The bystander, no header: counted as 127.0.0.1 (its cap of 1 is now used).
    async with Bystander(url, token(new_user()), probe="ping") as bystander:
        async with connect(url, additional_headers={"X-Forwarded-For": "198.51.100.1"}) as first:
            await first.send(json.dumps({"type": "hello", "token": token(new_user()), "device_id": "d"}))
            assert json.loads(await first.recv())["type"] == "welcome"
            assert await hello("198.51.100.2") == ("welcome", None)  # another client behind the proxy
            assert await hello("198.51.100.1") == ("too_many_connections", 4005)  # the same client again
            # A forged address left of the one the proxy appended is not believed.
            assert await hello("203.0.113.9, 198.51.100.1") == ("too_many_connections", 4005)
        await asyncio.sleep(0.5)  # (the bystander probes a while more)
    bystander.check()


# -- (d) frame flood ---------------------------------------------------------------------------


async def test_a_frame_flood_gets_rate_limited_then_4006_and_the_bystander_is_unaffected(cluster):
    rate, burst, rejects = 20, 40, 50
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), MAX_FRAMES_PER_SECOND=str(rate),
                       FRAME_BURST=str(burst), FRAME_REJECT_LIMIT=str(rejects))
    url = cluster.services["gw"].url
    async with Bystander(url, token(new_user()), probe="ping") as bystander:
        flood = Device(url, token(new_user()), "flood")
        await flood.connect()
        started = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            for _ in range(2_000):
                await flood.send_raw('{"type": "ping"}')
        await flood.wait_for(lambda: flood.close_code is not None, timeout=10)
        elapsed = time.monotonic() - started
        pongs = sum(f["type"] == "pong" for f in flood.frames)
        limited = [f for f in flood.frames if f["type"] == "error" and f["code"] == "rate_limited"]
        print(f"flood: {pongs} pongs, {len(limited)} rate_limited, closed {flood.close_code} after {elapsed:.2f} s")
        assert flood.close_code == 4006
        assert burst <= pongs <= burst + rate * elapsed + 1
        assert rejects <= len(limited) <= rejects + 1 + rejects / 10 * elapsed + 1

        # A client that keeps to the rate is never limited.
        calm = Device(url, token(new_user()), "calm")
        await calm.connect()
        for _ in range(30):
            await calm.send_raw('{"type": "ping"}')
            await asyncio.sleep(1.5 / rate)
        await calm.wait_for(lambda: sum(f["type"] == "pong" for f in calm.frames) == 30)
        assert not [f for f in calm.frames if f["type"] == "error"]
        await calm.close()
    bystander.check()


# -- (e) Origin -------------------------------------------------------------------------------


@pytest.mark.parametrize("allowed", ["https://app.example", ""])
async def test_browser_origins_outside_the_allow_list_are_refused_with_403(cluster, allowed):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ALLOWED_ORIGINS=allowed)
    url = cluster.services["gw"].url
    async with Bystander(url, token(new_user()), probe="ping") as bystander:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        user = new_user()
        async with connect(url, origin="https://app.example") if allowed else contextlib.nullcontext() as ws:
            if ws is not None:
                await ws.send(json.dumps({"type": "hello", "token": token(user), "device_id": "browser"}))
                assert json.loads(await ws.recv())["type"] == "welcome"
        if not allowed:  # the default, no list: every browser origin is refused
            with pytest.raises(InvalidStatus):
                async with connect(url, origin="https://app.example"):
                    pass
        native = Device(url, token(user), "native")  # no Origin header: not a browser, allowed
        assert (await native.connect())["type"] == "welcome"
        await native.close()
        await asyncio.sleep(0.5)  # (the bystander probes a while more)
    bystander.check()
