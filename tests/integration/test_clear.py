"""``clear`` through real processes: in order with the conversation's
messages (those queued before it run on the old state), a ``cleared`` event
on every device, the next message starts from an empty state, ``history``
shows the new start only and the old thread's checkpoints are deleted --
also with the worker killed while the turn before the clear runs."""

from __future__ import annotations

import asyncio
import json

import redis

from switchboard.shared import keys
from tests.support.client import Device, new_user
from tests.support.devices import phone_and_laptop

SLOW = "tests.support.graphs:slow"


def _kinds(device: Device) -> list[tuple[str, str | None]]:
    return [(e["kind"], e["client_msg_id"]) for e in device.events if e["kind"] in ("assistant", "cleared")]


async def test_clear_runs_in_order_and_the_next_turn_starts_empty(cluster, tmp_path):
    marks = tmp_path / "marks"
    env = dict(GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks), LEASE_TTL="1", CLAIM_IDLE="1")
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), **env)
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    old_thread = keys.thread_id(user, "a")
    try:
        await phone.send("a", "m1", "hello")
        assert (await phone.wait_reply("m1"))["text"] == "reply 1 to: hello"
        await phone.send("a", "m2", "sleep:1.5 a slow one")
        await phone.send("a", "m3", "queued before the clear")
        await phone.wait_frame("accepted", client_msg_id="m3")  # devices are not ordered with each other
        clear = json.dumps({"type": "clear", "conversation_id": "a", "client_msg_id": "clr"})
        await laptop.send_raw(clear)
        await laptop.send_raw(clear)  # a resend (its accepted "lost"): cleared once
        await laptop.send("a", "m4", "after the clear")  # one connection's frames are handled in order
        await phone.wait_for(lambda: [line for m in marks.iterdir() for line in m.read_text().splitlines()
                                      if line.startswith("sleep:1.5")] if marks.exists() else [])
        cluster.kill("w")  # kill -9 while the turn before the clear runs
        cluster.start("worker", "w2", **env)
        for device in (phone, laptop):
            await device.wait_reply("m4", timeout=20)
        await asyncio.sleep(0.3)
        for device in (phone, laptop):
            assert _kinds(device) == [("assistant", "m1"), ("assistant", "m2"), ("assistant", "m3"),
                                      ("cleared", None), ("assistant", "m4")]
        accepted = [f["id"] for f in laptop.frames if f["type"] == "accepted" and f["client_msg_id"] == "clr"]
        assert len(accepted) == 2 and accepted[0] == accepted[1]
        texts = {e["client_msg_id"]: e["text"] for e in phone.events if e["kind"] == "assistant"}
        assert texts["m3"] == "reply 3 to: queued before the clear"  # on the old state
        assert texts["m4"] == "reply 1 to: after the clear"  # from an empty one
        await phone.send_raw(json.dumps({"type": "history", "conversation_id": "a"}))
        history = await phone.wait_frame("history", conversation_id="a")
        assert [m["text"] for m in history["messages"]] == ["after the clear", "reply 1 to: after the clear"]
        # The old thread's checkpoints are gone; the new one's are there.
        assert not [k for k in client.scan_iter(match=f"*{old_thread}:*", count=1000)]
        assert [k for k in client.scan_iter(match=f"checkpoint:{keys.thread_id(user, 'a', 1)}:*", count=1000)]
        await laptop.send_raw(json.dumps({"type": "clear", "conversation_id": "never"}))
        assert (await laptop.wait_frame("error"))["code"] == "unknown_conversation"
    finally:
        client.close()
        await phone.close()
        await laptop.close()
