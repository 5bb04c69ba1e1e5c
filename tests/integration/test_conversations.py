"""Conversation commands over real sockets: ``conversations`` lists a user's
conversations newest first, a page at a time, with titles (the start of the
first message until ``rename``), counts and times; ``rename`` tells every
device; ``history`` pages backwards. Titles are sealed at rest with
ENCRYPTION_KEYS like every text."""

from __future__ import annotations

import json

import redis

from switchboard.shared import keys
from switchboard.shared.encryption import generate_key
from tests.support.client import Device, new_user
from tests.support.cluster import token

SLOW = "tests.support.graphs:slow"


async def _ask(device: Device, frame: dict, answer: str) -> dict:
    before = len([f for f in device.frames if f["type"] == answer])
    await device.send_raw(json.dumps(frame))
    await device.wait_for(lambda: len([f for f in device.frames if f["type"] == answer]) > before)
    return [f for f in device.frames if f["type"] == answer][-1]


async def test_conversations_are_listed_paged_renamed_and_their_history_pages_back(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=SLOW,
                       ENCRYPTION_KEYS=generate_key())
    user = new_user()
    phone = Device(cluster.services["gw1"].url, token(user), "phone")
    laptop = Device(cluster.services["gw2"].url, token(user), "laptop")
    await phone.connect()
    await laptop.connect()
    long_first = "Plan a trip to  Oslo\nin March: trains, a hotel near the fjord, and a museum or two please"
    try:
        for conversation, text in (("a", "hello there"), ("b", long_first), ("c", "third one")):
            await phone.send(conversation, f"{conversation}1", text)
            await phone.wait_reply(f"{conversation}1")
        page = await _ask(phone, {"type": "conversations", "limit": 2}, "conversations")
        assert [c["conversation_id"] for c in page["conversations"]] == ["c", "b"] and page["next"]
        b = page["conversations"][1]
        assert b["title"] == "Plan a trip to Oslo in March: trains, a hotel near the…"
        assert b["message_count"] == 1 and b["created_at"] <= b["updated_at"] and b["pending_interrupt"] is None
        rest = await _ask(phone, {"type": "conversations", "limit": 2, "before": page["next"]}, "conversations")
        assert [c["conversation_id"] for c in rest["conversations"]] == ["a"] and rest["next"] is None
        assert rest["conversations"][0]["title"] == "hello there"

        for i in (2, 3):  # "a" is the newest again, with three turns
            await phone.send("a", f"a{i}", f"more {i}")
            await phone.wait_reply(f"a{i}")
        await laptop.send_raw(json.dumps({"type": "rename", "conversation_id": "b", "title": "Oslo trip"}))
        for device in (phone, laptop):
            renamed = await device.wait_for(lambda d=device: [e for e in d.events if e["kind"] == "renamed"])
            assert (renamed[0]["conversation_id"], renamed[0]["text"]) == ("b", "Oslo trip")
        listed = await _ask(laptop, {"type": "conversations"}, "conversations")
        assert [(c["conversation_id"], c["title"], c["message_count"]) for c in listed["conversations"]] == [
            ("a", "hello there", 3), ("c", "third one", 1), ("b", "Oslo trip", 1)]  # renaming is not a message
        await laptop.send_raw(json.dumps({"type": "rename", "conversation_id": "nope", "title": "x"}))
        assert (await laptop.wait_frame("error"))["code"] == "unknown_conversation"
        client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        try:  # sealed at rest
            assert client.hget(keys.conversation(user, "b"), "title").startswith("f1:")
        finally:
            client.close()

        newest = await _ask(phone, {"type": "history", "conversation_id": "a", "limit": 4}, "history")
        assert [m["text"] for m in newest["messages"]] == ["more 2", "reply 2 to: more 2", "more 3",
                                                           "reply 3 to: more 3"]
        assert newest["has_more"] is True and all(m["id"] for m in newest["messages"])
        older = await _ask(phone, {"type": "history", "conversation_id": "a", "limit": 4,
                                   "before": newest["messages"][0]["id"]}, "history")
        assert [m["text"] for m in older["messages"]] == ["hello there", "reply 1 to: hello there"]
        assert older["has_more"] is False
    finally:
        await phone.close()
        await laptop.close()
