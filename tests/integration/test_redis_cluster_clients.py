"""Switchboard's Redis client on a Redis Cluster (``redis+cluster://``): the
gateway's accept script, as the gateway's ACL user, on users of every master,
and while the slot of a user who keeps sending moves to another master;
the subscriber's connection to the first seed that answers. (The services
on a cluster: test_on_redis_cluster.py.)

The cluster (bench/redis_cluster.py) is three masters with a replica
each, made from the embedded server."""

from __future__ import annotations

import asyncio

import pytest

from bench.redis_cluster import RedisClusterSet
from switchboard.gateway.store import GatewayStore
from switchboard.shared import acl, keys
from switchboard.shared.connection import make_client, make_publisher, make_subscriber
from switchboard.shared.settings import RedisSettings, StreamSettings

pytestmark = pytest.mark.timeout(90)


def _as(rc: RedisClusterSet, tier: str) -> RedisSettings:
    return RedisSettings(url=rc.cluster_url, username=acl.USERS[tier].name, password=rc.passwords()[tier])


async def test_accepts_run_on_every_master_and_ride_out_a_slot_moving(tmp_path):
    with RedisClusterSet(tmp_path / "cluster") as rc:
        client = make_client(_as(rc, "gateway"))
        try:
            store = GatewayStore(client, StreamSettings())
            await store.load()  # on every master
            users = {user: master for master, group in rc.users_on_each_master(2).items() for user in group}
            for user in users:
                first = await store.accept(user, "phone", "c", "m-1", "hello")
                again = await store.accept(user, "phone", "c", "m-1", "hello")
                assert first.fresh and not again.fresh and again.id == first.id  # deduplicated
            for user, master in users.items():  # each on the master owning the user's slot
                with rc.owner_of(keys.inbound(user, "c")).client() as owner:
                    assert owner.xlen(keys.inbound(user, "c")) == 1
                    assert [f["kind"] for _, f in owner.xrange(keys.outbound(user))] == ["user"]
                assert rc.owner_of(keys.inbound(user, "c")).name == master

            # One user keeps sending while their slot moves to another master.
            user = next(iter(users))
            slot = rc.keyslot(keys.inbound(user, "c"))
            source = rc.owner(slot)
            target = next(m for m in rc.masters() if m is not source)
            moving = asyncio.create_task(asyncio.to_thread(rc.move_slot, slot, target, 1, 0.05))
            ids = []
            n = 1
            while not moving.done() or n < 40:
                n += 1
                ids.append((await store.accept(user, "phone", "c", f"m-{n}", f"message {n}")).id)
            await moving
            assert rc.owner(slot) is target
            assert len(set(ids)) == len(ids)  # each accepted once
            with target.client() as owner:
                assert owner.xlen(keys.inbound(user, "c")) == len(ids) + 1  # nothing lost on the way
                assert len(owner.xrange(keys.outbound(user))) == len(ids) + 1
        finally:
            await client.aclose()


async def test_a_subscriber_hears_what_is_published_to_any_node_through_the_first_seed_that_answers(tmp_path):
    """A seed that refuses connections, and a replica, are passed over; a message published on
    each master reaches the one subscription, and the cluster-wide subscriber
    count sees it wherever it was made."""
    from switchboard.shared import cluster as sbcluster

    with RedisClusterSet(tmp_path / "cluster") as rc:
        dead = rc.nodes[-1]
        rc.kill(dead)  # a replica: the cluster stays whole
        replicas = [n for n in rc.nodes[:-1] if n not in rc.masters()]
        # The dead seed and the live replicas first: a subscriber on a replica
        # would not be counted (the cluster client asks the masters only).
        seeds = [(n.host, n.port) for n in [dead, *replicas, *rc.masters()]]
        url = "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in seeds)
        settings = RedisSettings(url=url, username=acl.ADMIN.name, password=rc.passwords()["admin"])
        subscriber, publisher = make_subscriber(settings), make_publisher(settings)
        client = make_client(settings)
        pubsub = subscriber.pubsub()
        try:
            channel = keys.fanout_control("f1")
            await pubsub.subscribe(channel)
            connection = pubsub.connection
            for _ in range(8):  # each subscriber starts from a seed of its own
                probe = make_subscriber(settings)
                try:
                    await probe.ping()
                    node = (await probe.execute_command("CLUSTER", "MYID")).decode()
                    assert node in {m.node_id for m in rc.masters()}, "a subscriber on a replica"
                finally:
                    await probe.aclose()
            assert (connection.host, connection.port) in {(m.host, m.port) for m in rc.masters()}
            [(_, counted)] = await sbcluster.numsub(client, [channel])
            assert counted == 1
            gateway_channel = keys.gateway_delivery("g1")  # what the fanout publishes on
            await pubsub.subscribe(gateway_channel)
            for master in rc.masters():
                with master.client(username=acl.ADMIN.name, password=rc.passwords()["admin"]) as direct:
                    direct.publish(channel, f"via {master.port}")
            pipe = publisher.pipeline(transaction=False)
            pipe.publish(gateway_channel, b"delivery")
            await pipe.execute()
            heard = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while len(heard) < len(rc.masters()) + 1:
                assert loop.time() < deadline, f"heard only {heard}"
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None:
                    heard.append(message["data"])
            assert sorted(heard) == sorted([f"via {m.port}".encode() for m in rc.masters()] + [b"delivery"])
        finally:
            await pubsub.aclose()
            await subscriber.aclose()
            await publisher.aclose()
            await client.aclose()
