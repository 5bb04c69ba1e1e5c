"""The node registry (shared/nodes.py): its settings, the pure parts (owner
values, device slots, listing entries, tables), and the membership, records
and listing against a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from switchboard.shared import keys, nodes
from switchboard.shared.settings import NodeSettings, SettingsError

# -- settings ---------------------------------------------------------------------------


def test_node_ttl_is_three_heartbeats_unless_set_and_must_exceed_one():
    assert NodeSettings.from_env({}) == NodeSettings(heartbeat=2.0, ttl=6.0)
    assert NodeSettings.from_env({"NODE_HEARTBEAT": "0.5"}) == NodeSettings(heartbeat=0.5, ttl=1.5)
    assert NodeSettings.from_env({"NODE_HEARTBEAT": "1", "NODE_TTL": "10"}) == NodeSettings(heartbeat=1.0, ttl=10.0)
    for env in ({"NODE_HEARTBEAT": "2", "NODE_TTL": "2"}, {"NODE_HEARTBEAT": "soon"}, {"NODE_TTL": "-1"},
                {"NODE_HEARTBEAT": "0"}):
        with pytest.raises(SettingsError):
            NodeSettings.from_env(env)


# -- pure -------------------------------------------------------------------------------


@pytest.mark.parametrize("connection,gateway", [("c1", "gw-1"), ("c1", None), ("c1", "odd|id"), ("c1", "")])
def test_owner_values_round_trip(connection, gateway):
    value = nodes.owner_value(connection, gateway)
    assert nodes.parse_owner(value) == (connection, gateway)


def test_devices_from_the_admission_keys():
    slots = [(b"tablet", 2_000.0), ("phone", 5_000.0), ("old", 500.0)]
    owners = {b"phone": b"c1|gw-1", "tablet": "c2", "old": "c0|gw-9"}
    got = nodes.devices_from(slots, owners, now_ms=1_000)
    assert got == [nodes.DeviceSlot("old", "c0", "gw-9", 500, False),
                   nodes.DeviceSlot("phone", "c1", "gw-1", 5_000, True),
                   nodes.DeviceSlot("tablet", "c2", None, 2_000, True)]
    assert nodes.devices_from([("lonely", 9e12)], {}, 0) == [nodes.DeviceSlot("lonely", None, None, int(9e12), True)]


def _record(**details) -> nodes.NodeRecord:
    return nodes.NodeRecord(tier="worker", id="w1", host="h", pid=42, started=1000.0, version="0.1.0", ttl=6.0,
                            details=details)


def test_a_listing_entry_ages_by_its_ttl_and_survives_a_foreign_value():
    raw = nodes.encode_record(_record(running=2, slots=64))
    node = nodes.node_from("worker", "w1", raw.encode(), 4_500)
    assert node.record == _record(running=2, slots=64) and node.age == pytest.approx(1.5)
    assert nodes.node_from("worker", "w1", raw, -2) is None  # expired between the two reads
    assert nodes.node_from("worker", "w1", None, 100) is None
    odd = nodes.node_from("worker", "w1", b"\xff not json", 1000)
    assert odd.record is None and odd.as_json() == {"tier": "worker", "id": "w1", "unreadable": True, "age": 0.0}
    assert nodes.decode_record('{"tier": "worker"}') is None  # fields missing


def test_tables():
    listing = {"gateway": [nodes.Node("gateway", "gw-1", 0.4, nodes.NodeRecord(
        tier="gateway", id="gw-1", host="box", pid=7, started=0.0, version="0.1.0", ttl=6.0,
        details={"port": 8765, "connections": 3}))], "worker": [nodes.Node("worker", "w1", 1.0, None)]}
    text = nodes.format_nodes(listing, now=7325.0)
    lines = text.splitlines()
    assert lines[0].split() == ["TIER", "ID", "HOST", "PID", "UP", "HEARTBEAT", "VERSION", "DETAILS"]
    assert lines[1].split() == ["gateway", "gw-1", "box", "7", "2h02m", "0.4s", "ago", "0.1.0", "connections=3",
                                "port=8765"]
    assert "(unreadable record)" in lines[2]
    assert nodes.format_nodes({"gateway": []}) == "no live nodes\n"
    devices = [nodes.DeviceSlot("phone", "c1", "gw-1", 5, True), nodes.DeviceSlot("pad", "c2", "gw-2", 5, True),
               nodes.DeviceSlot("old", "c0", "gw-1", 1, False)]
    table = nodes.format_devices("alice", devices, {"gw-1"})
    assert "connected" in table.splitlines()[1] and "gateway not registered" in table.splitlines()[2]
    assert "expired" in table.splitlines()[3]
    assert nodes.format_devices("alice", [], set()) == "no devices of alice are connected\n"


# -- against Redis ------------------------------------------------------------------------


@pytest.fixture
async def client(clean_redis):
    c = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    yield c
    await c.aclose()


def _registry(client, tier: str, ttl: float = 6.0, **details) -> nodes.NodeRegistry:
    return nodes.NodeRegistry(client, NodeSettings(heartbeat=ttl / 3, ttl=ttl), tier, f"{tier}-{uuid.uuid4().hex[:6]}",
                              lambda: details)


async def test_registered_nodes_are_listed_by_tier_and_a_leaving_one_goes_at_once(client):
    gateway, worker = _registry(client, "gateway", connections=2), _registry(client, "worker", running=1, slots=4)
    await gateway.heartbeat()
    await worker.heartbeat()
    listing = await nodes.list_nodes(client)
    assert [n.id for n in listing["gateway"]] == [gateway.id] and listing["fanout"] == []
    found = listing["worker"][0]
    assert found.record.details == {"running": 1, "slots": 4} and found.record.pid == worker.pid
    assert 0 <= found.age < 1
    await gateway.leave()
    assert (await nodes.list_nodes(client))["gateway"] == []
    assert not await client.exists(keys.node("gateway", gateway.id), keys.node_members("gateway"))


async def test_a_node_that_stops_renewing_expires_and_is_pruned_from_its_tier(client):
    dead, alive = _registry(client, "worker", ttl=0.3), _registry(client, "worker")
    await dead.heartbeat()
    await asyncio.sleep(0.1)
    assert (await nodes.list_nodes(client, ("worker",)))["worker"][0].age >= 0.1
    await asyncio.sleep(0.3)
    assert (await nodes.list_nodes(client, ("worker",)))["worker"] == []  # expired: not listed
    assert await client.sismember(keys.node_members("worker"), dead.id)  # ... until a live node prunes
    await alive.heartbeat()  # its first heartbeat prunes
    assert await client.smembers(keys.node_members("worker")) == {alive.id}


async def test_run_registers_renews_and_leaves_on_stop(client):
    node = _registry(client, "fanout", ttl=0.3, users=0)
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    await asyncio.sleep(0.5)  # past the ttl: only renewals keep it
    assert [n.id for n in (await nodes.list_nodes(client))["fanout"]] == [node.id]
    stop.set()
    await asyncio.wait_for(task, 1)
    assert (await nodes.list_nodes(client))["fanout"] == []


async def test_membership_keeps_only_members_whose_key_lives(client):
    members = nodes.Membership(client, "test:members", lambda m: f"test:alive:{m}")
    await members.announce("a", "one", ttl=10)
    await members.announce("b", "two", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await members.live() == {"a": "one"}
    assert await members.forget_expired() == ["b"]
    await members.leave("a")
    assert await members.live() == {} and not await client.exists("test:members")


async def test_a_users_devices_read_the_same_with_a_synchronous_client(client, clean_redis):
    import redis

    await client.zadd(keys.devices("alice"), {"phone": 9e12, "old": 1.0})
    await client.hset(keys.device_owners("alice"), mapping={"phone": "c1|gw-1", "old": "c0|gw-0"})
    sync = redis.Redis.from_url(clean_redis)
    try:
        assert nodes.user_devices_sync(sync, "alice") == await nodes.user_devices(client, "alice") == [
            nodes.DeviceSlot("old", "c0", "gw-0", 1, False), nodes.DeviceSlot("phone", "c1", "gw-1", int(9e12), True)]
    finally:
        sync.close()
