"""The services on a Redis Cluster (``REDIS_URL=redis+cluster://…``): three
masters with a replica each, made from the embedded server
(bench/redis_cluster.py), every tier logged in as its own user on
every node.

Users are picked so that each master owns some of them; the work is spread
over three work shards (one stream, hence one slot, each). What holds on a
single Redis holds here: every message answered once, every device sees
every event once and in order, a new device replays the same, a dropped
one resumes exactly; and it still holds when a master is killed mid-run and
its replica promoted, and while a user's slot moves to another master.
With ``REDIS_WAIT_REPLICAS=1`` an accept is done only once the replica of
its user's master has it, on a cluster too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from bench.redis_cluster import RedisClusterSet
from switchboard.shared import acl, keys
from tests.support.client import Device
from tests.support.cluster import Cluster, token
from tests.support.devices import finals

SLOW = "tests.support.graphs:slow"


@contextlib.asynccontextmanager
async def _running(tmp_path, *, workers: int = 2, **env: str):
    """A cluster of Redis, the services on it and an operator's cluster
    client: ``(redis cluster, services, operator)``."""
    with RedisClusterSet(tmp_path / "rc") as rc:
        services = Cluster(rc.operator_url, tmp_path, tiers={t: rc.tier_login(t) for t in acl.SERVICE_TIERS},
                           env={"WORK_SHARDS": "3", "GRAPH": SLOW, **env})
        operator = rc.async_client()
        try:
            services.start_many(("fanout", "f"), ("gateway", "gw"),
                                *[("worker", f"w{i}") for i in range(workers)])
            yield rc, services, operator
        finally:
            await operator.aclose()
            services.stop()  # fails the test on any ACL refusal, on any node


def _users(rc: RedisClusterSet, per_master: int = 2) -> list[str]:
    """Users whose keys live on each master, ``per_master`` each."""
    return [user for group in rc.users_on_each_master(per_master).values() for user in group]


async def _stream(operator, user: str) -> list[tuple[str, dict]]:
    return await operator.xrange(keys.outbound(user))


async def _assert_each_once_in_order(operator, device: Device, user: str, cmids: list[str]) -> None:
    """The user's stream holds one reply per message sent, and ``device``
    showed exactly the stream's events, in order."""
    stream = await _stream(operator, user)
    replies = [fields["cmid"] for _, fields in stream if fields["kind"] == "assistant"]
    assert sorted(replies) == sorted(cmids), f"{user}: replies {replies}"
    assert device.event_ids() == [entry_id for entry_id, _ in stream]


async def test_the_core_protocol_on_a_cluster(tmp_path):
    async with _running(tmp_path) as (rc, services, operator):
        url = services.services["gw"].url
        users = _users(rc)
        phones = {user: Device(url, token(user), "phone") for user in users}
        for phone in phones.values():
            await phone.connect()
        sent: dict[str, list[str]] = {user: [] for user in users}
        for n in range(3):
            for user, phone in phones.items():
                cmid = f"m{n}"
                await phone.send(f"c{n % 2}", cmid, f"sleep:0.05 message {n} of {user}")
                sent[user].append(cmid)
        for user, phone in phones.items():
            for cmid in sent[user]:
                reply = await phone.wait_reply(cmid, timeout=60)
                assert reply["text"].endswith(f"message {cmid[1:]} of {user}")
            await _assert_each_once_in_order(operator, phone, user, sent[user])

        # A second device replays the same history; a dropped one resumes exactly.
        for user, phone in phones.items():
            laptop = Device(url, token(user), "laptop")
            await laptop.connect()
            await laptop.wait_for(lambda: len(laptop.event_ids()) == len(phone.event_ids()))
            assert laptop.event_ids() == phone.event_ids()
            await phone.drop()
            await laptop.send("c0", "while-away", "sleep:0 sent while the phone was away")
            await laptop.wait_reply("while-away", timeout=60)
            welcome = await phone.connect(last_id=phone.event_ids()[-1], epoch=phone.welcome["epoch"])
            assert welcome["recovered"] is True
            await phone.wait_reply("while-away", timeout=30)
            await _assert_each_once_in_order(operator, phone, user, [*sent[user], "while-away"])
            await laptop.close()
        # A cancel reaches the worker running the turn (pub/sub through another
        # node than the user's) and stops it, well before its 30 s are up.
        user, phone = next(iter(phones.items()))
        await phone.send("c9", "long", "sleep:30 a long one")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while await operator.hget(keys.conversation(user, "c9"), "attempt_of") is None:
            assert loop.time() < deadline, "no worker began the long turn"
            await asyncio.sleep(0.05)
        asked = loop.time()
        await phone.send_raw(json.dumps({"type": "cancel", "conversation_id": "c9"}))
        await phone.wait_for(lambda: ("cancelled", "long") in finals(phone), timeout=10)
        assert loop.time() - asked < 5
        # Every work stream carried work, and the workers acknowledged all of it.
        for shard in range(3):
            [group] = await operator.xinfo_groups(keys.work(shard))
            assert group["entries-read"] > 0, f"work shard {shard} was never read"
            deadline = loop.time() + 10
            while (await operator.xpending(keys.work(shard), keys.WORKER_GROUP))["pending"]:
                assert loop.time() < deadline, f"work shard {shard}: notices left unacknowledged"
                await asyncio.sleep(0.1)
        for phone in phones.values():
            await phone.close()


async def test_a_master_killed_mid_run_loses_nothing_it_replicated(tmp_path):
    """``kill -9`` of a master while its users' turns run: its replica is
    promoted and every accepted message is answered once -- each accept was
    replicated before the kill (``WAIT`` here, by the test: replication is
    asynchronous, docs/guarantees.md)."""
    async with _running(tmp_path) as (rc, services, operator):
        url = services.services["gw"].url
        users = _users(rc, per_master=1)
        victim_user = users[0]
        victim = rc.owner_of(keys.outbound(victim_user))
        phones = {user: Device(url, token(user), "phone") for user in users}
        for phone in phones.values():
            await phone.connect()
        for user, phone in phones.items():
            for n in range(4):
                await phone.send("c", f"m{n}", f"sleep:0.3 message {n}")
        for phone in phones.values():
            await phone.wait_for(lambda p=phone: len([f for f in p.frames if f["type"] == "accepted"]) == 4)
        with victim.client(username=acl.ADMIN.name, password=rc.passwords()["admin"]) as direct:
            assert direct.execute_command("WAIT", 1, 10_000) >= 1
        rc.kill(victim)  # turns are running: workers are mid-graph
        rc.wait_failover(victim)
        for user, phone in phones.items():
            for n in range(4):
                await phone.wait_reply(f"m{n}", timeout=90)
            await phone.send("c", "after", "sleep:0 after the failover")
            await phone.wait_reply("after", timeout=60)
            await _assert_each_once_in_order(operator, phone, user, [*(f"m{n}" for n in range(4)), "after"])
        assert all(s.process.poll() is None for s in services.services.values())  # everyone rode it out
        for phone in phones.values():
            await phone.close()


async def test_with_wait_replicas_on_a_cluster_accepted_means_on_the_replica(tmp_path):
    """``REDIS_WAIT_REPLICAS=1`` on a cluster: ``WAIT`` goes to the master of
    the user's slot, on the connection that wrote. With that master's replica
    stopped, a send gets ``unavailable`` after ``REDIS_WAIT_TIMEOUT_MS`` (its
    resend too) while a user on another master is accepted at once; resent
    once the replica is back, it is accepted under the id it was stored
    with. Then the master is killed the moment messages are accepted, with
    no wait of the test's own: every one is answered, once."""
    async with _running(tmp_path, workers=1, REDIS_WAIT_REPLICAS="1",
                        REDIS_WAIT_TIMEOUT_MS="300") as (rc, services, operator):
        url = services.services["gw"].url
        user, other = _users(rc, per_master=1)[:2]
        master = rc.owner_of(keys.outbound(user))
        assert rc.owner_of(keys.outbound(other)) is not master
        phone, bystander = Device(url, token(user), "phone"), Device(url, token(other), "phone")
        for device in (phone, bystander):
            await device.connect()
        await phone.send("c", "first", "sleep:0 with the replica up")
        await phone.wait_reply("first", timeout=30)

        [replica] = rc.replicas(master)
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # the send, and its resend while the replica is still away
                started = time.monotonic()
                await phone.send("c", "late", "sleep:0 with the replica stopped")
                refused = await phone.wait_frame("error", client_msg_id="late")
                assert refused["code"] == "unavailable", refused
                assert time.monotonic() - started >= 0.3  # it waited REDIS_WAIT_TIMEOUT_MS first
                phone.frames.remove(refused)
            await bystander.send("c", "other", "sleep:0 on another master")
            await bystander.wait_frame("accepted", client_msg_id="other", timeout=5)
            assert not [f for f in phone.frames if f["type"] == "accepted" and f["client_msg_id"] == "late"]
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        stored = [f["in"] for _, f in await _stream(operator, user) if f["kind"] == "user" and f.get("cmid") == "late"]
        assert len(stored) == 1  # on the master, written once
        await phone.send("c", "late", "sleep:0 with the replica stopped")
        assert (await phone.wait_frame("accepted", client_msg_id="late"))["id"] == stored[0]
        await phone.wait_reply("late", timeout=30)

        for n in range(3):
            await phone.send("c", f"m{n}", f"sleep:0.3 message {n}")
        await phone.wait_for(lambda: {f["client_msg_id"] for f in phone.frames if f["type"] == "accepted"}
                             >= {"m0", "m1", "m2"})
        rc.kill(master)  # at once: what was accepted is on the replica already
        rc.wait_failover(master)
        for n in range(3):
            await phone.wait_reply(f"m{n}", timeout=90)
        await bystander.wait_reply("other", timeout=30)
        await _assert_each_once_in_order(operator, phone, user, ["first", "late", "m0", "m1", "m2"])
        assert all(s.process.poll() is None for s in services.services.values())
        for device in (phone, bystander):
            await device.close()


async def test_a_slot_moving_under_a_chat_loses_nothing(tmp_path):
    """A user's slot is resharded to another master (``CLUSTER SETSLOT``
    steps, keys migrated a few at a time) while the user chats: the clients
    follow ``MOVED``/``ASK`` and retry ``TRYAGAIN``; each message is answered
    once and shown once, in order. With ``REDIS_WAIT_REPLICAS=1``: the
    accepts and commits, sent with their ``WAIT`` to the master the client
    knows, are refused by the old one and sent again to the new."""
    async with _running(tmp_path, workers=1, REDIS_WAIT_REPLICAS="1") as (rc, services, operator):
        url = services.services["gw"].url
        user = _users(rc, per_master=1)[0]
        phone = Device(url, token(user), "phone")
        await phone.connect()
        for n in range(5):  # some history to migrate
            await phone.send("c", f"before{n}", f"sleep:0 before {n}")
        for n in range(5):
            await phone.wait_reply(f"before{n}", timeout=60)
        source = rc.owner_of(keys.outbound(user))
        target = next(m for m in rc.masters() if m is not source)
        sent = [f"before{n}" for n in range(5)]
        stop = asyncio.Event()

        async def chat() -> None:
            n = 0
            while not stop.is_set():
                cmid = f"during{n}"
                await phone.send("c", cmid, f"sleep:0 during {n}")
                sent.append(cmid)
                await phone.wait_reply(cmid, timeout=60)
                n += 1

        chatting = asyncio.create_task(chat())
        await asyncio.sleep(0.5)
        moved = await asyncio.to_thread(rc.move_slot, rc.keyslot(keys.outbound(user)), target, batch=2, pause=0.1)
        await asyncio.sleep(0.5)
        stop.set()
        await chatting
        assert moved > 0 and rc.owner_of(keys.outbound(user)) is target
        assert len(sent) > 5, "no message was sent while the slot moved"
        await phone.send("c", "after", "sleep:0 after the move")
        sent.append("after")
        await phone.wait_reply("after", timeout=60)
        await _assert_each_once_in_order(operator, phone, user, sent)
        await phone.close()



def _cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "switchboard.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "REDIS_URL": url})


def _keys_of(rc: RedisClusterSet, user: str) -> dict[str, str]:
    """Every key that names ``user``, on every master: key -> the master holding it."""
    found = {}
    for master in rc.masters():
        with master.client(username=acl.ADMIN.name, password=rc.passwords()["admin"]) as direct:
            found.update({key.decode() if isinstance(key, bytes) else key: repr(master)
                          for key in direct.scan_iter(match=f"*{user}*", count=1000)})
    return found


async def test_the_operator_commands_on_a_cluster(tmp_path):
    """``switchboard inspect``, ``export``, ``deadletters`` and ``delete`` through
    a ``redis+cluster://`` URL: they read and erase one user's keys on the
    master that holds them, and nothing of a user on another master."""
    async with _running(tmp_path, workers=1, MAX_ATTEMPTS="1") as (rc, services, operator):
        url = services.services["gw"].url
        gone, kept = _users(rc, per_master=1)[:2]
        assert rc.owner_of(keys.outbound(gone)) is not rc.owner_of(keys.outbound(kept))
        devices = {user: Device(url, token(user), "phone") for user in (gone, kept)}
        for user, device in devices.items():
            await device.connect()
            await device.send("a", "a1", "sleep:0 hello")
            await device.wait_reply("a1", timeout=30)
            await device.send("a", "bad", "fail always")  # a dead letter of each
            await device.wait_reply("bad", timeout=30)
        await devices[gone].close()
        kept_before = _keys_of(rc, kept)
        assert any(gone in key for key in _keys_of(rc, gone)) and kept_before

        inspected = _cli(rc.operator_url, "inspect", gone, "--json")
        assert inspected.returncode == 0, inspected.stderr
        assert "a" in json.dumps(json.loads(inspected.stdout))
        exported = _cli(rc.operator_url, "export", gone)
        assert exported.returncode == 0, exported.stderr
        lines = [json.loads(line) for line in exported.stdout.splitlines()]
        assert any("sleep:0 hello" in json.dumps(line) for line in lines)
        letters = _cli(rc.operator_url, "deadletters", "--count", "100")
        assert letters.returncode == 0, letters.stderr
        assert {gone, kept} <= {json.loads(line).get("user") for line in letters.stdout.splitlines()}

        for _ in range(100):  # the gateway releases the device's slot as the connection closes
            if not await operator.zcard(keys.devices(gone)):
                break
            await asyncio.sleep(0.05)
        deleted = _cli(rc.operator_url, "delete", gone, "--yes")
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert _keys_of(rc, gone) == {}
        letters = _cli(rc.operator_url, "deadletters", "--count", "100")
        assert gone not in letters.stdout and kept in letters.stdout
        assert _keys_of(rc, kept) == kept_before  # the other user's keys, where they were
        await devices[kept].send("a", "a2", "sleep:0 still here")
        await devices[kept].wait_reply("a2", timeout=30)
        await devices[kept].close()
