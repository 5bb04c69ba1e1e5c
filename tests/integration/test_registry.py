"""The node registry with real processes: `switchboard nodes` lists every
gateway, worker and fanout; a worker killed with -9 is gone within NODE_TTL
while the others stay; a gateway stopped with SIGTERM is gone at once; and
`switchboard devices USER` names the gateway each device is on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from switchboard.shared import nodes
from tests.support.client import Device, new_user
from tests.support.cluster import token

#: The worker renews every 0.3 s and expires 0.9 s after a kill -9. The others
#: keep a long NODE_TTL: only their leaving can take them off the list quickly.
FAST_NODE = {"NODE_HEARTBEAT": "0.3", "NODE_TTL": "0.9"}
SLOW_NODE = {"NODE_HEARTBEAT": "0.3", "NODE_TTL": "30"}


def _cli(redis_url: str, *args: str):
    out = subprocess.run([sys.executable, "-m", "switchboard.cli", *args], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "REDIS_URL": redis_url})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def _ids(redis_client) -> dict[str, set[str]]:
    return {tier: {node.id for node in found} for tier, found in (await nodes.list_nodes(redis_client)).items()}


async def _until_gone(redis_client, tier: str, name: str, limit: float) -> float:
    """Seconds until ``name`` leaves the listing (fails after ``limit``)."""
    start = time.monotonic()
    while name in (await _ids(redis_client))[tier]:
        assert time.monotonic() - start < limit, f"{tier} {name} still listed after {limit} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_nodes_lists_every_tier_and_a_dead_or_stopped_node_leaves_it(cluster, redis_client):
    cluster.start_many(("fanout", "f1"), ("gateway", "gw1"), ("gateway", "gw2"), **SLOW_NODE)
    cluster.start("worker", "w1", **FAST_NODE)
    listing = _cli(cluster.redis_url, "nodes", "--json")
    assert {tier: sorted(n["id"] for n in found) for tier, found in listing.items()} == {
        "gateway": ["gw1", "gw2"], "worker": ["w1"], "fanout": ["f1"]}
    by_id = {n["id"]: n for found in listing.values() for n in found}
    for name in ("f1", "gw1", "gw2", "w1"):
        assert by_id[name]["pid"] == cluster.services[name].process.pid and 0 <= by_id[name]["age"] < 1
    assert by_id["gw1"]["details"] == {"connections": 0, "port": cluster.services["gw1"].port}
    assert by_id["w1"]["details"]["slots"] == 64 and by_id["w1"]["details"]["running"] == 0
    assert by_id["f1"]["details"]["users"] == 0 and by_id["w1"]["ttl"] == 0.9

    cluster.kill("w1", signal.SIGKILL)
    gone = await _until_gone(redis_client, "worker", "w1", limit=0.9 + 1.0)  # NODE_TTL + a margin
    assert await _ids(redis_client) == {"gateway": {"gw1", "gw2"}, "worker": set(), "fanout": {"f1"}}

    cluster.services["gw2"].process.send_signal(signal.SIGTERM)
    left = await _until_gone(redis_client, "gateway", "gw2", limit=1.0)  # its NODE_TTL is 30 s: it left
    assert await _ids(redis_client) == {"gateway": {"gw1"}, "worker": set(), "fanout": {"f1"}}
    print(f"worker gone {gone:.2f} s after kill -9 (NODE_TTL 0.9 s); gateway gone {left:.2f} s after SIGTERM")


async def test_devices_names_the_gateway_each_device_is_on(cluster, redis_client):
    cluster.start_many(("fanout", "f1"), ("worker", "w1"), ("gateway", "gw1"), ("gateway", "gw2"))
    user = new_user()
    phone = Device(cluster.services["gw1"].url, token(user), "phone")
    tablet = Device(cluster.services["gw2"].url, token(user), "tablet")
    await phone.connect()
    await tablet.connect()
    try:
        found = _cli(cluster.redis_url, "devices", user, "--json")
        assert [(d["device"], d["gateway"], d["live"], d["gateway_registered"]) for d in found] == [
            ("phone", "gw1", True, True), ("tablet", "gw2", True, True)]
        await phone.close()  # its slot, and with it its gateway entry, is freed as the gateway sees the close
        deadline = time.monotonic() + 5
        while [d.device for d in await nodes.user_devices(redis_client, user)] != ["tablet"]:
            assert time.monotonic() < deadline, await nodes.user_devices(redis_client, user)
            await asyncio.sleep(0.02)
    finally:
        await phone.close()
        await tablet.close()


def test_the_commands_refuse_a_bad_user_id_and_say_when_redis_is_unreachable():
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}
    bad = subprocess.run([sys.executable, "-m", "switchboard.cli", "devices", "not a user!"], capture_output=True,
                         text=True, timeout=30, env=env)
    assert bad.returncode == 2 and "is not a user id" in bad.stderr and not bad.stdout
    down = subprocess.run([sys.executable, "-m", "switchboard.cli", "nodes"], capture_output=True, text=True,
                          timeout=30, env=env)
    assert down.returncode == 1 and "cannot read the registry" in down.stderr and "Traceback" not in down.stderr
