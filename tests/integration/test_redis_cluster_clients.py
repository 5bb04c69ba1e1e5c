"""Switchboard's Redis client on a Redis Cluster (``redis+cluster://``): the
gateway's accept script, as the gateway's ACL user, on users of every master,
and while the slot of a user who keeps sending moves to another master.
(The services themselves do not run on a cluster yet: docs/scaling.md.)

The cluster (tests/support/redis_cluster.py) is three masters with a replica
each, made from the embedded server."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.gateway.store import GatewayStore
from switchboard.shared import acl, keys
from switchboard.shared.connection import make_client
from switchboard.shared.settings import RedisSettings, StreamSettings
from tests.support.redis_cluster import RedisClusterSet

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
