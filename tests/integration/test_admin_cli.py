"""The operator's commands that change data: ``switchboard deadletters retry``
queues a dead-lettered message again so it is answered exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import redis

from switchboard.shared import keys
from tests.support.client import Device, new_user
from tests.support.cluster import token

SLOW = "tests.support.graphs:slow"


def _cli(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "switchboard.cli", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "REDIS_URL": redis_url, **env})


def _dead_letters(redis_url: str) -> list[dict]:
    run = _cli(redis_url, "deadletters", "--count", "100")
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


async def test_a_retried_dead_letter_is_answered_exactly_once_on_every_device(cluster, tmp_path):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW, MAX_ATTEMPTS="1")
    user = new_user()
    fixed = tmp_path / "fixed"
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    laptop = Device(cluster.services["gw"].url, token(user), "laptop")
    await phone.connect()
    await laptop.connect()
    try:
        await phone.send("c", "bad", f"fail-unless:{fixed} please")
        assert (await phone.wait_reply("bad"))["kind"] == "turn_error"
        await phone.send("c", "next", "after it")
        assert (await phone.wait_reply("next"))["kind"] == "assistant"
        [dead] = [d for d in _dead_letters(cluster.redis_url) if d["user"] == user]
        assert dead["cmid"] == "bad" and dead["kept"]

        fixed.touch()  # the graph's bug is fixed; and the worker dies before the retry is answered
        cluster.kill("w")
        run = _cli(cluster.redis_url, "deadletters", "retry", dead["id"])
        assert run.returncode == 0, run.stderr
        assert f"message bad of user {user}, conversation c" in run.stdout
        cluster.start("worker", "w2", GRAPH=SLOW, MAX_ATTEMPTS="1")

        for device in (phone, laptop):
            await device.wait_for(lambda d=device: [e for e in d.replies("bad") if e["kind"] == "assistant"])
        assert [d for d in _dead_letters(cluster.redis_url) if d["user"] == user] == []
        again = _cli(cluster.redis_url, "deadletters", "retry", dead["id"])
        assert again.returncode == 1 and "no dead letter" in again.stderr
        # The later message is answered too, and the retried one in its place in the graph's state:
        await phone.send("c", "last", "one more")
        assert (await phone.wait_reply("last"))["text"] == "reply 4 to: one more"
        await asyncio.sleep(0.5)  # time for a second reply to show, were one written
        for device in (phone, laptop):
            kinds = [(e["kind"], e["client_msg_id"]) for e in device.events if e["kind"] != "user"]
            assert kinds == [("turn_error", "bad"), ("assistant", "next"), ("assistant", "bad"),
                             ("assistant", "last")], kinds
            assert [e["text"] for e in device.replies("bad")][1] == f"reply 3 to: fail-unless:{fixed} please"
        client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        try:
            assert client.xlen(keys.dead_copies(user)) == 0
            assert client.hget(keys.usage(user), "waiting") == "0"
        finally:
            client.close()
    finally:
        await phone.close()
        await laptop.close()


def test_a_retry_of_an_unknown_dead_letter_changes_nothing(cluster):
    run = _cli(cluster.redis_url, "deadletters", "retry", "1-1")
    assert run.returncode == 1 and "no dead letter 1-1" in run.stderr


def _everything(client: redis.Redis) -> dict[str, object]:
    """Every key of the Redis with its whole content (what an erased user's id must appear in nowhere)."""
    found: dict[str, object] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            value: object = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "stream":
            value = client.xrange(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "ReJSON-RL":
            value = client.execute_command("JSON.GET", key)
        else:
            raise AssertionError(f"a key of a type this test cannot read: {key} {kind}")
        found[key] = value
    return found


async def test_delete_erases_every_trace_of_a_user_and_nothing_of_another(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW, MAX_ATTEMPTS="1")
    gone, kept = new_user(), new_user()
    devices = {u: Device(cluster.services["gw"].url, token(u), "phone") for u in (gone, kept)}
    for user, device in devices.items():
        await device.connect()
        for conversation in ("a", "b"):
            await device.send(conversation, f"{conversation}1", "hello")
            reply = await device.wait_reply(f"{conversation}1")
            await device.ack(reply["id"])
        await device.send("a", "bad", "fail always")  # a dead letter of each
        await device.wait_reply("bad")
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        before = _everything(client)
        assert any(gone in key for key in before) and any(f"{{u:{gone}}}/" in key for key in before)
        assert any(gone in str(entries) for key, entries in before.items() if key == keys.dead_letters())

        refused = _cli(cluster.redis_url, "delete", gone, "--yes")
        assert refused.returncode == 1 and "1 connected devices (phone)" in refused.stderr
        await devices[gone].close()
        for _ in range(100):  # the gateway releases the device's slot as the connection closes
            if not client.zcard(keys.devices(gone)):
                break
            await asyncio.sleep(0.05)
        def theirs(everything: dict[str, object]) -> dict[str, object]:  # other tests share the Redis
            return {k: v for k, v in everything.items() if any(u in k or u in str(v) for u in (gone, kept))}

        closed = theirs(_everything(client))
        dry = _cli(cluster.redis_url, "delete", gone)
        assert dry.returncode == 1 and dry.stdout.startswith(f"would delete for user {gone}: ")
        assert theirs(_everything(client)) == closed

        run = _cli(cluster.redis_url, "delete", gone, "--yes")
        assert run.returncode == 0, run.stderr
        assert "dead letters" in run.stdout and "1 dead letters" in run.stdout
        after = _everything(client)
        traces = {key: value for key, value in after.items() if gone in key or gone in str(value)}
        assert traces == {}
        for conversation in ("a", "b"):  # nor is any document of the user's left in the checkpoints' index
            thread = "".join("\\" + c if not c.isalnum() else c for c in keys.thread_id(gone, conversation))
            assert client.ft("checkpoint").search(f"@thread_id:{{{thread}}}").total == 0
            other = "".join("\\" + c if not c.isalnum() else c for c in keys.thread_id(kept, conversation))
            assert client.ft("checkpoint").search(f"@thread_id:{{{other}}}").total > 0
        # The other user's data is all there, as it was, and they chat on.
        mine = {key: value for key, value in before.items() if kept in key or kept in str(value)}
        assert mine and {key: after.get(key) for key in mine if key != keys.dead_letters()} == {
            key: value for key, value in mine.items() if key != keys.dead_letters()}
        assert [f for _, f in after[keys.dead_letters()] if f["user"] == kept]
        await devices[kept].send("a", "a2", "still here")
        assert (await devices[kept].wait_reply("a2"))["text"] == "reply 3 to: still here"
        # The erased user can come back, as a new user with nothing of the old.
        back = Device(cluster.services["gw"].url, token(gone), "phone")
        await back.connect()
        await back.send("a", "again", "hello again")
        assert (await back.wait_reply("again"))["text"] == "reply 1 to: hello again"
        await back.close()
    finally:
        client.close()
        for device in devices.values():
            await device.close()


async def test_export_gives_every_conversation_and_event_of_a_user_in_plain_text(cluster, tmp_path):
    from switchboard.shared.encryption import generate_key

    key = generate_key()
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW, ENCRYPTION_KEYS=key,
                       SHUTDOWN_GRACE="0.5")
    user, other = new_user(), new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    stranger = Device(cluster.services["gw"].url, token(other), "phone")
    await phone.connect()
    await stranger.connect()
    try:
        for conversation, cmid, text in (("a", "a1", "hello"), ("a", "a2", "and you?"), ("b", "b1", "über ☃")):
            await phone.send(conversation, cmid, text)
            await phone.wait_reply(cmid)
        await stranger.send("a", "s1", "not theirs")
        await stranger.wait_reply("s1")
        await phone.send("b", "b2", "sleep:20 still running")  # waits while its turn runs
        await phone.wait_frame("accepted", client_msg_id="b2")
        out = tmp_path / "export.jsonl"
        run = _cli(cluster.redis_url, "export", user, "--out", str(out), ENCRYPTION_KEYS=key)
        assert run.returncode == 0, run.stderr
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert lines[0]["type"] == "user" and lines[0]["user"] == user and lines[0]["format"] == 1
        assert [(l["conversation"], l["count"]) for l in lines if l["type"] == "conversation"] == [("a", 2), ("b", 2)]
        said = {c: [(l["role"], l["text"]) for l in lines if l["type"] == "message" and l["conversation"] == c]
                for c in ("a", "b")}
        assert said == {"a": [("user", "hello"), ("assistant", "reply 1 to: hello"), ("user", "and you?"),
                              ("assistant", "reply 2 to: and you?")],
                        "b": [("user", "über ☃"), ("assistant", "reply 1 to: über ☃")]}
        [waiting] = [l for l in lines if l["type"] == "waiting"]
        assert (waiting["conversation"], waiting["client_msg_id"], waiting["text"]) == ("b", "b2", "sleep:20 still running")
        events = [l for l in lines if l["type"] == "event"]
        await phone.wait_for(lambda: len(phone.events) >= len(events))
        assert [(e["id"], e["kind"], e["text"]) for e in events] == [
            (e["id"], e["kind"], e["text"]) for e in phone.events]
        assert not any("not theirs" in json.dumps(l) or other in json.dumps(l) for l in lines)
        # Without the key the text cannot be opened: marked, never shown as ciphertext.
        blind = _cli(cluster.redis_url, "export", user)
        assert blind.returncode == 1 and "unreadable" in blind.stderr
        assert "f1:" not in blind.stdout and "hello" not in blind.stdout
    finally:
        await phone.close()
        await stranger.close()
