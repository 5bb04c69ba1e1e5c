"""The local Redis Cluster fixture (bench/redis_cluster.py) works:
the cluster comes up ok with every node loading the modules and the ACL
users; a key written through redis-py's asyncio ``RedisCluster`` is read
back; a killed master's replica takes over with what was replicated; and a
slot holding keys moves to another master while a client keeps using it,
without an error and without losing a key.

The services do not run on a cluster yet: these tests are about the fixture
(docs: /work/notes/cluster-findings.md)."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench.redis_cluster import SLOTS, RedisClusterSet
from switchboard.shared import acl

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def rc(tmp_path):
    with RedisClusterSet(tmp_path / "cluster") as cluster:
        yield cluster


def _errorstat(node, error: str) -> int:
    with node.client() as c:
        return int(c.info("errorstats").get(f"errorstat_{error}", {}).get("count", 0))


def test_the_cluster_is_ok_with_modules_and_users(rc):
    masters = rc.masters()
    assert len(masters) == 3
    assert sorted(masters, key=lambda m: m.name) == rc.nodes[:3]
    assert all(len(rc.replicas(m)) == 1 for m in masters)
    owned = {slot for m in masters for first, last in rc.cluster_nodes(m)[m.node_id]["slots"]
             for slot in range(first, last + 1)}
    assert owned == set(range(SLOTS))
    for node in rc.nodes:
        with node.client() as c:
            info = c.cluster("info")
            assert info["cluster_state"] == "ok" and info["cluster_known_nodes"] == "6"
            assert {"search", "ReJSON"} <= {m["name"] for m in c.module_list()}
        for tier in acl.SERVICE_TIERS:  # every node loaded the one ACL file
            with node.client(**rc._login(tier)) as c:
                assert c.ping()
        anonymous = redis.Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0))  # no retries: no 4 s wait
        with anonymous as c, pytest.raises(redis.AuthenticationError):
            c.ping()  # `default` is disabled here too
    env = rc.client_env("worker")
    assert env["REDIS_USERNAME"] == "sb-worker" and env["REDIS_URL"].startswith("redis+cluster://")
    assert acl.read_password(env["REDIS_PASSWORD_FILE"]) == rc.passwords()["worker"]
    with redis.cluster.RedisCluster.from_url(rc.url, decode_responses=True) as c:  # the operator's URL
        assert len(c.get_primaries()) == 3
        assert c.set("sb:{u:operator}:x", "1") and c.get("sb:{u:operator}:x") == "1"


async def test_a_key_written_through_the_cluster_client_is_readable(rc):
    client = rc.async_client()
    try:
        users = [u for group in rc.users_on_each_master().values() for u in group]
        for user in users:
            await client.set(f"sb:{{u:{user}}}:x", f"value of {user}")
        for user in users:
            key = f"sb:{{u:{user}}}:x"
            assert await client.get(key) == f"value of {user}"
            with rc.owner_of(key).client() as owner:  # it is on the master owning its slot
                assert owner.get(key) == f"value of {user}"
        per_master = {}
        for m in rc.masters():
            with m.client() as c:
                per_master[m.name] = c.dbsize()
        assert sorted(per_master.values()) == [3, 3, 3]  # on every master, not all on one
    finally:
        await client.aclose()


async def test_a_killed_masters_replica_takes_over_with_what_was_replicated(rc):
    client = rc.async_client()
    try:
        first = rc.masters()[0]
        replica = rc.replicas(first)[0]
        users = rc.users_on_each_master(per_master=20)
        for user in (u for group in users.values() for u in group):
            await client.set(f"sb:{{u:{user}}}:x", user)
        # WAIT counts the replication offset of the connection's last write: the
        # last one here is after every write above, so all of them are replicated.
        with first.client() as c:
            pipe = c.pipeline(transaction=False)
            pipe.set(f"sb:{{u:{users[first.name][0]}}}:mark", "1")
            pipe.execute_command("WAIT", 1, 5000)
            assert pipe.execute()[1] == 1

        old = rc.kill_master(0)
        assert old is first
        new = rc.wait_failover(old)
        assert new is replica
        for user in (u for group in users.values() for u in group):
            assert await client.get(f"sb:{{u:{user}}}:x") == user  # the same client, after the failover
        await client.set(f"sb:{{u:{users[first.name][0]}}}:after", "1")

        rc.restart(old)  # back, as the new master's replica
        assert rc.replicas(new) == [old]
        assert new in rc.masters() and old not in rc.masters()
    finally:
        await client.aclose()


async def test_a_slot_moves_while_a_client_uses_it(rc):
    """One task on one cluster client: redis-py's asyncio cluster client sends
    ASKING and the redirected command on two different pooled connections
    when tasks share it, and then fails commands (findings, c)."""
    tag = "{u:moving}"
    slot = rc.keyslot(tag)
    source = rc.owner(slot)
    target = next(m for m in rc.masters() if m is not source)
    client = rc.async_client()
    seen: list[str] = []
    written: dict[str, str] = {}
    try:
        for i in range(300):
            await client.set(f"sb:{tag}:old:{i}", f"old {i}")
        asks = _errorstat(source, "ASK")
        stop = asyncio.Event()

        async def use() -> int:
            i = 0
            while not stop.is_set():
                key = f"sb:{tag}:new:{i}"
                try:
                    await client.set(key, f"new {i}")
                    written[key] = f"new {i}"
                    got = await client.get(key)
                    old = await client.get(f"sb:{tag}:old:{i % 300}")
                    if got != f"new {i}" or old != f"old {i % 300}":
                        seen.append(f"read {key}: {got!r}, old {i % 300}: {old!r}")
                except redis.RedisError as exc:
                    seen.append(f"{type(exc).__name__}: {exc}")
                i += 1
            return i

        user = asyncio.create_task(use())
        await asyncio.sleep(0.2)
        moved = await asyncio.to_thread(rc.move_slot, slot, target, 10, 0.05)
        await asyncio.sleep(0.2)
        stop.set()
        operations = await user

        assert seen == []  # no error, no wrong read
        assert moved >= 300 and operations > 100
        assert _errorstat(source, "ASK") > asks, "the client was sent to the target mid-migration"
        assert rc.owner(slot) is target
        with target.client() as c, source.client() as s:
            assert c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 300 + len(written)
            assert s.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        for i in range(300):
            assert await client.get(f"sb:{tag}:old:{i}") == f"old {i}"
        for key, value in written.items():
            assert await client.get(key) == value
    finally:
        await client.aclose()
