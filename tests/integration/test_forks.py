"""``regenerate`` and ``edit``: LangGraph time travel over the protocol. The
conversation forks from the checkpoint before the message replaced; every
device sees a ``replaced`` event and then the new branch's events, and
``history`` shows the new branch only -- also when the worker running the
fork is killed, and for a device that reconnects in the middle of it."""

from __future__ import annotations

import asyncio
import json

from tests.support.client import Device, new_user
from tests.support.devices import phone_and_laptop, shown
from tests.support.graphs import runs
from tests.support.wait import until

SLOW = "tests.support.graphs:slow"


async def _history(device: Device, conversation: str = "c") -> list[tuple[str, str | None, str]]:
    before = sum(f["type"] == "history" for f in device.frames)
    await device.send_raw(json.dumps({"type": "history", "conversation_id": conversation}))
    await device.wait_for(lambda: sum(f["type"] == "history" for f in device.frames) > before)
    page = [f for f in device.frames if f["type"] == "history"][-1]
    return [(m["role"], m["client_msg_id"], m["text"]) for m in page["messages"]]


async def _error(device: Device, cmid: str) -> str:
    frame = await device.wait_frame("error", client_msg_id=cmid)
    device.frames.remove(frame)
    return frame["code"]


async def test_regenerate_and_edit_fork_the_conversation_on_every_device(cluster, tmp_path):
    marks = tmp_path / "marks"
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=SLOW,
                       SLOW_GRAPH_MARKS=str(marks))
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        for cmid, text in (("m1", "hello"), ("m2", "second"), ("m3", "third")):
            await phone.send("c", cmid, text)
            await phone.wait_reply(cmid)
        await laptop.wait_reply("m3")
        await laptop.send_raw(json.dumps({"type": "regenerate", "conversation_id": "c", "client_msg_id": "m2"}))
        assert await _error(laptop, "m2") == "not_last"
        await laptop.send_raw(json.dumps({"type": "edit", "conversation_id": "c", "client_msg_id": "nope",
                                          "text": "x", "new_client_msg_id": "e0"}))
        assert await _error(laptop, "e0") == "unknown_message"  # an edit's errors name its new message

        mark = len(laptop.events)
        await laptop.send_raw(json.dumps({"type": "regenerate", "conversation_id": "c", "client_msg_id": "m3",
                                          "request_id": "r1"}))
        await laptop.wait_frame("accepted", client_msg_id="m3")
        for device in (phone, laptop):
            await device.wait_for(lambda d=device: len(d.replies("m3")) == 2)
        assert shown(laptop)[-2:] == [("replaced", "m3", "reply"), ("assistant", "m3", "reply 3 to: third")]
        assert runs(marks).count("third") == 2  # the graph ran it again, on the state before it
        # The same request sent again (its accepted lost): the same entry, no second regeneration.
        accepted = [f for f in laptop.frames if f["type"] == "accepted" and f["client_msg_id"] == "m3"]
        await laptop.send_raw(json.dumps({"type": "regenerate", "conversation_id": "c", "client_msg_id": "m3",
                                          "request_id": "r1"}))
        await laptop.wait_for(lambda: len([f for f in laptop.frames if f["type"] == "accepted"
                                           and f["client_msg_id"] == "m3"]) == 2)
        assert len({f["id"] for f in laptop.frames if f["type"] == "accepted" and f["client_msg_id"] == "m3"}) == 1
        assert accepted

        await phone.send_raw(json.dumps({"type": "edit", "conversation_id": "c", "client_msg_id": "m2",
                                         "text": "changed", "new_client_msg_id": "e2"}))
        for device in (phone, laptop):
            reply = await device.wait_reply("e2")
            assert reply["text"] == "reply 2 to: changed"  # m2 and m3 are gone from the graph's state
            assert shown(device)[-3:] == [("replaced", "m2", "message"), ("user", "e2", "changed"),
                                           ("assistant", "e2", "reply 2 to: changed")]
        assert len(shown(laptop)[mark:]) == 5  # nothing else: one regenerate, one edit
        assert await _history(laptop) == [("user", "m1", "hello"), ("assistant", None, "reply 1 to: hello"),
                                          ("user", "e2", "changed"), ("assistant", None, "reply 2 to: changed")]
        await phone.send("c", "m4", "after")
        assert (await phone.wait_reply("m4"))["text"] == "reply 3 to: after"

        # The first message edited: the conversation starts again from nothing.
        await laptop.send_raw(json.dumps({"type": "edit", "conversation_id": "c", "client_msg_id": "m1",
                                          "text": "a new start", "new_client_msg_id": "e1"}))
        assert (await laptop.wait_reply("e1"))["text"] == "reply 1 to: a new start"
        # Resent after it ran (its accepted lost): the same accepted, not an error, no second edit.
        await laptop.send_raw(json.dumps({"type": "edit", "conversation_id": "c", "client_msg_id": "m1",
                                          "text": "a new start", "new_client_msg_id": "e1"}))
        await laptop.wait_for(lambda: len([f for f in laptop.frames if f["type"] == "accepted"
                                           and f["client_msg_id"] == "e1"]) == 2)
        assert len({f["id"] for f in laptop.frames if f["type"] == "accepted" and f["client_msg_id"] == "e1"}) == 1
        assert await _history(phone) == [("user", "e1", "a new start"), ("assistant", None, "reply 1 to: a new start")]

        # Not while a turn runs: busy, nothing stored.
        await phone.send("c", "slow", "sleep:2 take your time")
        await phone.wait_frame("accepted", client_msg_id="slow")
        await laptop.send_raw(json.dumps({"type": "regenerate", "conversation_id": "c", "client_msg_id": "e1"}))
        assert await _error(laptop, "e1") in ("busy", "not_last")
        await phone.wait_reply("slow")
        for device in (phone, laptop):
            ids = device.event_ids()
            assert len(ids) == len(set(ids)) and [k for k, _, _ in shown(device)].count("replaced") == 3
    finally:
        await phone.close()
        await laptop.close()


async def test_a_regenerate_or_edit_whose_worker_is_killed_answers_once_and_a_reconnecting_device_sees_it_once(
        cluster, tmp_path):
    marks = tmp_path / "marks"
    env = dict(GRAPH=SLOW, SLOW_GRAPH_MARKS=str(marks), LEASE_TTL="1", CLAIM_IDLE="1")
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), **env)
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        await phone.send("c", "m1", "hello")
        await phone.wait_reply("m1")
        await phone.send("c", "m2", "sleep:2 think it over")
        await phone.wait_reply("m2", timeout=30)
        await laptop.wait_reply("m2")
        await laptop.send_raw(json.dumps({"type": "regenerate", "conversation_id": "c", "client_msg_id": "m2"}))
        await laptop.wait_frame("accepted", client_msg_id="m2")
        await until(lambda: runs(marks).count("sleep:2 think it over") == 2, 15, "the regenerated run sleeping")
        await phone.drop()  # the phone loses its network meanwhile
        cluster.kill("w")  # kill -9 mid-run
        cluster.start("worker", "w2", **env)
        await laptop.wait_for(lambda: len(laptop.replies("m2")) == 2, timeout=30)
        await phone.connect(last_id=phone.event_ids()[-1], epoch=phone.welcome["epoch"])
        await phone.wait_for(lambda: len(phone.replies("m2")) == 2, timeout=30)
        await asyncio.sleep(0.5)
        for device in (phone, laptop):
            ids = device.event_ids()
            assert len(ids) == len(set(ids))
            kinds = [(k, c) for k, c, _ in shown(device)]
            assert kinds == [("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2"),
                             ("replaced", "m2"), ("assistant", "m2")]
        assert runs(marks).count("sleep:2 think it over") == 3  # first, killed, again
        assert await _history(phone) == [("user", "m1", "hello"), ("assistant", None, "reply 1 to: hello"),
                                         ("user", "m2", "sleep:2 think it over"),
                                         ("assistant", None, "reply 2 to: sleep:2 think it over")]

        # An edit, its worker killed mid-run in the same way.
        await phone.send_raw(json.dumps({"type": "edit", "conversation_id": "c", "client_msg_id": "m1",
                                         "text": "sleep:2 instead", "new_client_msg_id": "e1"}))
        await phone.wait_frame("accepted", client_msg_id="e1")
        await until(lambda: "sleep:2 instead" in runs(marks), 15, "the edited run sleeping")
        cluster.kill("w2")
        cluster.start("worker", "w3", **env)
        for device in (phone, laptop):
            assert (await device.wait_reply("e1", timeout=30))["text"] == "reply 1 to: sleep:2 instead"
        await asyncio.sleep(0.5)
        for device in (phone, laptop):
            assert [(k, c) for k, c, _ in shown(device)][-3:] == [("replaced", "m1"), ("user", "e1"),
                                                                   ("assistant", "e1")]
            assert len(device.replies("e1")) == 1
        assert runs(marks).count("sleep:2 instead") == 2  # killed, again
        assert await _history(laptop) == [("user", "e1", "sleep:2 instead"),
                                          ("assistant", None, "reply 1 to: sleep:2 instead")]
    finally:
        await phone.close()
        await laptop.close()
