"""Admission: the pure decisions, and the scripts of the shared slots against
a real Redis (one test per branch of each script)."""

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from switchboard.gateway.admission import (
    Admitted, AdmissionStore, LocalCounts, Refused, Registry, Slot, client_address, ip_key, origin_allowed)
from switchboard.shared import keys
from switchboard.shared.nodes import user_devices


# -- pure ----------------------------------------------------------------------------


@pytest.mark.parametrize("address,key", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # the same /64: one client
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("fe80::1%eth0", "fe80::/64"),
    (None, "unknown"),
    ("not an address", "unknown"),
])
def test_ip_key(address, key):
    assert ip_key(address) == key


@pytest.mark.parametrize("origin,allowed,ok", [
    (None, (), True),  # a non-browser client sends no Origin
    ("https://app.example", (), False),  # the default refuses every browser origin
    ("https://app.example", ("https://app.example",), True),
    ("https://app.example:8443", ("https://app.example",), False),  # exact match, port included
    ("https://evil.example", ("https://app.example",), False),
    ("https://anything.example", ("*",), True),
])
def test_origin_allowed(origin, allowed, ok):
    assert origin_allowed(origin, allowed) is ok


def test_local_counts_cap_per_key():
    counts = LocalCounts(cap=2)
    assert counts.enter("a") and counts.enter("a")
    assert not counts.enter("a")
    assert counts.enter("b")
    counts.leave("a")
    assert counts.enter("a")
    counts.leave("a"), counts.leave("a"), counts.leave("b")
    assert not counts.counts  # nothing kept for addresses that left


# -- scripts ---------------------------------------------------------------------------


@pytest.fixture
async def store(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield AdmissionStore(client, ttl=30.0)
    await client.aclose()


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_ip_cap_admits_up_to_the_cap_and_frees_on_release(store):
    ip = name("ip")
    assert [await store.admit_ip(ip, f"c{i}", cap=2) for i in range(3)] == [Admitted(), Admitted(), Refused(2)]
    await store.release_ip(ip, "c0")
    assert await store.admit_ip(ip, "c3", cap=2) == Admitted()
    assert 0 < await store.redis.pttl(keys.ip_connections(ip)) <= 60_000  # the key itself goes away


async def test_expired_ip_slots_are_dropped_by_the_next_admission(store):
    ip = name("ip")
    dead = AdmissionStore(store.redis, ttl=0.05)  # a gateway that stopped renewing
    assert await dead.admit_ip(ip, "dead", cap=1) == Admitted()
    assert await store.admit_ip(ip, "live", cap=1) == Refused(1)
    await asyncio.sleep(0.1)
    assert await store.admit_ip(ip, "live", cap=1) == Admitted()
    assert await store.redis.zrange(keys.ip_connections(ip), 0, -1) == ["live"]


async def test_device_cap_and_release(store):
    u = name("u")
    assert await store.admit_device(u, "d1", "c1", cap=2) == Admitted()
    assert await store.admit_device(u, "d2", "c2", cap=2) == Admitted()
    assert await store.admit_device(u, "d3", "c3", cap=2) == Refused(2)
    assert await store.release_device(u, "d1", "c1") is True
    assert await store.admit_device(u, "d3", "c3", cap=2) == Admitted()
    assert await store.redis.hgetall(keys.device_owners(u)) == {"d2": "c2", "d3": "c3"}


async def test_a_device_takes_its_slot_over_even_at_the_cap(store):
    u = name("u")
    await store.admit_device(u, "d1", "old", cap=1)
    assert await store.admit_device(u, "d1", "new", cap=1) == Admitted(previous="old")
    # The old connection ends later: it must not free the new one's slot.
    assert await store.release_device(u, "d1", "old") is False
    assert await store.redis.hget(keys.device_owners(u), "d1") == "new"
    assert await store.admit_device(u, "d2", "other", cap=1) == Refused(1)


async def test_expired_device_slots_are_dropped_with_their_owners(store):
    u = name("u")
    dead = AdmissionStore(store.redis, ttl=0.05)
    await dead.admit_device(u, "d1", "c1", cap=1)
    await asyncio.sleep(0.1)
    assert await store.admit_device(u, "d2", "c2", cap=1) == Admitted()
    assert await store.redis.hgetall(keys.device_owners(u)) == {"d2": "c2"}


async def test_renew_keeps_slots_and_reports_those_taken_over(store):
    u, ip = name("u"), name("ip")
    short = AdmissionStore(store.redis, ttl=0.3)
    for conn, device in (("c1", "d1"), ("c2", "d2")):
        await short.admit_ip(ip, conn, cap=10)
        await short.admit_device(u, device, conn, cap=10)
    await short.admit_device(u, "d2", "c2-new", cap=10)  # d2 reconnected elsewhere
    slots = [Slot("c1", ip, u, "d1"), Slot("c2", ip, u, "d2")]
    for _ in range(4):  # well past the ttl, renewed every 0.1 s
        assert await short.renew(slots, device_cap=10) == ["c2"]
        await asyncio.sleep(0.1)
    assert await store.admit_ip(ip, "x", cap=2) == Refused(2)  # c1 and c2 still counted
    assert await store.redis.hget(keys.device_owners(u), "d1") == "c1"


async def test_renew_readmits_an_expired_slot_within_the_cap(store):
    u, ip = name("u"), name("ip")
    stalled = AdmissionStore(store.redis, ttl=0.05)
    await stalled.admit_device(u, "d1", "c1", cap=1)
    await asyncio.sleep(0.1)
    await store.admit_device(u, "d2", "c2", cap=1)  # took the expired slot's place
    lost = await store.renew([Slot("c1", ip, u, "d1")], device_cap=1)
    assert lost == ["c1"]  # the user is at the cap: c1 must go
    await store.release_device(u, "d2", "c2")
    assert await store.renew([Slot("c1", ip, u, "d1")], device_cap=1) == []  # room again: re-admitted


async def test_registry_closes_the_connections_that_lost_their_slot(store):
    u, ip = name("u"), name("ip")
    registry = Registry(store, device_cap=10)
    closed = []
    for conn in ("c1", "c2"):
        await store.admit_ip(ip, conn, cap=10)
        await store.admit_device(u, conn.replace("c", "d"), conn, cap=10)
        registry.add(Slot(conn, ip, u, conn.replace("c", "d")), lambda conn=conn: closed.append(conn))
    await store.admit_device(u, "d1", "elsewhere", cap=10)
    await registry.renew_once()
    await registry.renew_once()
    assert closed == ["c1"]  # once


@pytest.mark.parametrize("peer,forwarded,trusted,client", [
    ("203.0.113.7", ["198.51.100.1"], (), "203.0.113.7"),  # no trusted proxies: the header is ignored
    ("203.0.113.7", ["198.51.100.1"], ("10.0.0.0/8",), "203.0.113.7"),  # not from a trusted proxy
    ("10.0.0.5", ["198.51.100.1"], ("10.0.0.0/8",), "198.51.100.1"),
    # A client's own X-Forwarded-For is left of what the proxies append: ignored.
    ("10.0.0.5", ["6.6.6.6, 198.51.100.1, 10.0.0.9"], ("10.0.0.0/8",), "198.51.100.1"),
    ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], ("10.0.0.0/8",), "198.51.100.1"),  # several headers
    ("10.0.0.5", [], ("10.0.0.0/8",), "10.0.0.5"),  # a trusted peer that forwarded nothing
    ("10.0.0.5", ["10.0.0.7"], ("10.0.0.0/8",), "10.0.0.7"),  # only proxies: the first
    ("::1", ["2001:db8::1"], ("::1",), "2001:db8::1"),
])
def test_client_address(peer, forwarded, trusted, client):
    assert client_address(peer, forwarded, trusted) == client


async def test_each_devices_gateway_is_recorded_with_its_connection_and_goes_with_its_slot(store):
    u = name("u")
    gw1, gw2 = AdmissionStore(store.redis, ttl=30.0, gateway="gw-1"), AdmissionStore(store.redis, ttl=30.0,
                                                                                       gateway="gw|2")
    assert await gw1.admit_device(u, "phone", "c1", cap=10) == Admitted()
    assert await gw2.admit_device(u, "tablet", "c2", cap=10) == Admitted()
    where = {d.device: (d.connection, d.gateway, d.live) for d in await user_devices(store.redis, u)}
    assert where == {"phone": ("c1", "gw-1", True), "tablet": ("c2", "gw|2", True)}
    # The phone moves to the other gateway: the previous connection comes back bare.
    assert await gw2.admit_device(u, "phone", "c3", cap=10) == Admitted(previous="c1")
    assert await gw1.renew([Slot("c1", "ip", u, "phone")], device_cap=10) == ["c1"]  # gw-1 learns it lost it
    assert await gw1.release_device(u, "phone", "c1") is False
    assert [(d.device, d.gateway) for d in await user_devices(store.redis, u)] == [("phone", "gw|2"),
                                                                                  ("tablet", "gw|2")]
    assert await gw2.release_device(u, "tablet", "c2") is True
    assert [d.device for d in await user_devices(store.redis, u)] == ["phone"]
