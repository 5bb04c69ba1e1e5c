"""``switchboard inspect USER`` shows what Redis holds about one user: after
a turn, a dead-lettered message and a message still running, its
conversations' progress, the waiting message and the lease, both devices
with their gateways and acked positions, the checkpoints and the dead
letter -- and nothing of another user."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.client import Device, new_user
from tests.support.cluster import token

SLOW = "tests.support.graphs:slow"


def _inspect(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "switchboard.cli", "inspect", *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "REDIS_URL": redis_url})


async def test_inspect_shows_a_users_conversations_devices_and_dead_letters(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=SLOW,
                       MAX_ATTEMPTS="1", SHUTDOWN_GRACE="0.5")
    user, other = new_user(), new_user()
    phone = Device(cluster.services["gw1"].url, token(user), "phone")
    tablet = Device(cluster.services["gw2"].url, token(user), "tablet")
    stranger = Device(cluster.services["gw1"].url, token(other), "phone")
    for device in (phone, tablet, stranger):
        await device.connect()
    try:
        await phone.send("a", "m1", "hello")
        reply = await phone.wait_reply("m1")
        await phone.ack(reply["id"])
        await phone.send("b", "bad", "fail always")
        assert (await phone.wait_reply("bad"))["kind"] == "turn_error"
        await stranger.send("a", "s1", "fail always")  # the other user's dead letter
        await stranger.wait_reply("s1")
        await phone.send("a", "long", "sleep:15 still running")
        await phone.wait_for(lambda: any(f["type"] == "accepted" and f["client_msg_id"] == "long"
                                         for f in phone.frames))
        await tablet.wait_for(lambda: any(e.get("kind") == "user" and e.get("client_msg_id") == "long"
                                          for e in tablet.events))

        run = _inspect(cluster.redis_url, user, "--json")
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["user"] == user
        conversations = {c["id"]: c for c in report["conversations"]}
        assert set(conversations) == {"a", "b"}
        a, b = conversations["a"], conversations["b"]
        assert a["count"] == 2 and a["waiting"] == 1 and a["done"] != a["last"]  # "long" waits, leased
        assert a["lease_ttl_s"] is not None and a["lease_ttl_s"] > 0
        assert b["count"] == 1 and b["waiting"] == 0 and b["done"] == b["last"] and b["lease_ttl_s"] is None
        devices = {d["device"]: d for d in report["devices"]}
        assert (devices["phone"]["gateway"], devices["phone"]["live"], devices["phone"]["acked"]) == (
            "gw1", True, reply["id"])
        assert (devices["tablet"]["gateway"], devices["tablet"]["live"]) == ("gw2", True)
        assert [(d["cmid"], d["conv"]) for d in report["dead_letters"]] == [("bad", "b")]
        assert "text" not in report["dead_letters"][0]  # a message's text is not shown by inspect
        assert report["outbound"]["length"] >= 5 and report["outbound"]["epoch"]
        assert report["checkpoints"].get("checkpoint", 0) >= 1
        assert report["keys"] and all(f"{{u:{user}}}" in k["key"] for k in report["keys"])
        assert other not in run.stdout

        text = _inspect(cluster.redis_url, user)
        assert text.returncode == 0, text.stderr
        assert f"user {user}" in text.stdout and "1 waiting, leased" in text.stdout
        assert "phone: on gateway gw1" in text.stdout and "dead letters: 1" in text.stdout

        nobody = _inspect(cluster.redis_url, new_user())
        assert nobody.returncode == 0 and "nothing stored" in nobody.stdout
        bad = _inspect(cluster.redis_url, "not a user!")
        assert bad.returncode == 2 and "not a user id" in bad.stderr
    finally:
        for device in (phone, tablet, stranger):
            await device.close()
