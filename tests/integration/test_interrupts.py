"""Human-in-the-loop: a graph that calls LangGraph's ``interrupt`` asks the
person through an ``interrupt`` event on every device; a ``resume`` from any
device (on any gateway) runs the turn on, once. The pending interrupt is
listed by ``conversations``, holds what is queued behind it, survives worker
and gateway restarts and reconnects, and a cancel puts the graph's state back
as if the turn never ran."""

from __future__ import annotations

import asyncio
import json

from tests.support.client import Device, new_user
from tests.support.devices import finals, phone_and_laptop
from tests.support.wait import until

ASKING = "tests.support.graphs:asking"


def _asked(device: Device, cmid: str) -> list[dict]:
    """The interrupt events of turn ``cmid``, their text parsed (``id``, ``value``)."""
    return [json.loads(e["text"]) for e in device.events if e["kind"] == "interrupt" and e["client_msg_id"] == cmid]


async def _resume(device: Device, cmid: str, value, interrupt_id: str | None = None, conversation: str = "c") -> None:
    frame = {"type": "resume", "conversation_id": conversation, "client_msg_id": cmid, "value": value}
    if interrupt_id is not None:
        frame["interrupt_id"] = interrupt_id
    await device.send_raw(json.dumps(frame))


async def _listed(device: Device) -> dict:
    before = sum(f["type"] == "conversations" for f in device.frames)
    await device.send_raw(json.dumps({"type": "conversations"}))
    await device.wait_for(lambda: sum(f["type"] == "conversations" for f in device.frames) > before)
    return {c["conversation_id"]: c for c in [f for f in device.frames if f["type"] == "conversations"][-1]
            ["conversations"]}


async def test_questions_in_turn_answered_from_either_device_once(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=ASKING)
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        await phone.send("c", "trip", "ask:2 plan a trip")
        for device in (phone, laptop):
            await device.wait_for(lambda d=device: _asked(d, "trip"))
        [first] = _asked(laptop, "trip")
        assert first["value"] == {"question": 1, "about": "ask:2 plan a trip"}
        pending = (await _listed(laptop))["c"]["pending_interrupt"]
        assert pending == {"client_msg_id": "trip", "id": first["id"], "value": first["value"]}
        # Queued behind the question (enqueue): held; refused with reject.
        await phone.send("c", "later", "and after that?")
        await phone.wait_frame("accepted", client_msg_id="later")
        await phone.send("c", "nope", "not now", if_busy="reject")
        assert (await phone.wait_frame("error", client_msg_id="nope"))["code"] == "busy"
        await _resume(phone, "other", "x")  # no such turn waits
        assert (await phone.wait_frame("error", client_msg_id="other"))["code"] == "not_interrupted"

        await _resume(laptop, "trip", "by train", first["id"])
        await laptop.wait_frame("accepted", client_msg_id="trip")
        for device in (phone, laptop):
            await device.wait_for(lambda d=device: len(_asked(d, "trip")) == 2)
        second = _asked(phone, "trip")[1]
        assert second["value"]["question"] == 2 and second["id"] != first["id"]
        # The first answer sent again (a resend): refused, the second question is not answered by it.
        await _resume(laptop, "trip", "by train", first["id"])
        assert (await laptop.wait_frame("error", client_msg_id="trip"))["code"] == "not_interrupted"
        await _resume(phone, "trip", ["in", "May"])  # whichever is pending
        await _resume(phone, "trip", "twice")
        assert (await phone.wait_frame("error", client_msg_id="trip"))["code"] == "already_resumed"
        for device in (phone, laptop):
            reply = await device.wait_reply("trip")
            assert reply["text"] == 'reply 1 to: ask:2 plan a trip answers: ["by train", ["in", "May"]]'
            await device.wait_reply("later")
        await asyncio.sleep(0.3)
        for device in (phone, laptop):
            kinds = [(e["kind"], e["client_msg_id"]) for e in device.events if e["kind"] != "delta"]
            assert kinds == [("user", "trip"), ("interrupt", "trip"), ("user", "later"), ("resumed", "trip"),
                             ("interrupt", "trip"), ("resumed", "trip"), ("assistant", "trip"),
                             ("assistant", "later")]
        assert (await phone.wait_reply("later"))["text"] == "reply 2 to: and after that?"
        assert (await _listed(phone))["c"]["pending_interrupt"] is None
        await _resume(laptop, "trip", "again")  # answered: nothing waits

        def errors() -> list[str]:
            return [f["code"] for f in laptop.frames if f["type"] == "error" and f.get("client_msg_id") == "trip"]

        await laptop.wait_for(lambda: len(errors()) == 2)
        assert errors() == ["not_interrupted", "not_interrupted"]
    finally:
        await phone.close()
        await laptop.close()


async def test_a_pending_question_survives_restarts_and_a_killed_resumed_turn_answers_once(cluster, tmp_path):
    marks = tmp_path / "marks"
    env = dict(GRAPH=ASKING, SLOW_GRAPH_MARKS=str(marks), LEASE_TTL="1", CLAIM_IDLE="1")
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), **env)
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        await phone.send("c", "q", "ask:1 then-sleep:3 decide")
        await phone.wait_for(lambda: _asked(phone, "q"))
        [asked] = _asked(phone, "q")
        # Everything restarts while the question waits; the phone's connection drops.
        cluster.kill("w")
        await phone.drop()
        cluster.kill("gw1")
        cluster.start("gateway", "gw1", **env)
        cluster.start("worker", "w2", **env)
        await phone.connect(url=cluster.services["gw1"].url, last_id=phone.event_ids()[-1],
                            epoch=phone.welcome["epoch"])
        assert (await _listed(phone))["c"]["pending_interrupt"]["id"] == asked["id"]
        await _resume(phone, "q", "yes", asked["id"])
        await phone.wait_frame("accepted", client_msg_id="q")

        def resumedruns() -> int:
            lines = [line for mark in marks.iterdir() for line in mark.read_text().splitlines()]
            return len(lines) - 1  # the first run asked

        await until(lambda: resumedruns() >= 1, 15, "the resumed run sleeping")  # kill it now
        cluster.kill("w2")
        cluster.start("worker", "w3", **env)  # runs it on again
        for device in (phone, laptop):
            reply = await device.wait_reply("q", timeout=60)
            assert reply["text"] == 'reply 1 to: ask:1 then-sleep:3 decide answers: ["yes"]'
        await asyncio.sleep(0.3)
        for device in (phone, laptop):
            assert finals(device) == [("assistant", "q")]
            assert [e["kind"] for e in device.events if e["kind"] in ("interrupt", "resumed")] == \
                ["interrupt", "resumed"]
            assert len(set(device.event_ids())) == len(device.event_ids())
        assert resumedruns() == 2  # killed once, run on once more; never asked again
    finally:
        await phone.close()
        await laptop.close()


async def test_a_cancel_or_an_interrupting_send_ends_a_pending_question_and_its_state(cluster):
    cluster.start_many(("fanout", "f"), ("gateway", "gw1"), ("gateway", "gw2"), ("worker", "w"), GRAPH=ASKING)
    user = new_user()
    phone, laptop = await phone_and_laptop(cluster, user)
    try:
        await phone.send("c", "first", "hello")
        assert (await phone.wait_reply("first"))["text"] == "reply 1 to: hello"
        await phone.send("c", "q1", "ask:1 shall I?")
        await laptop.wait_for(lambda: _asked(laptop, "q1"))
        await laptop.send_raw(json.dumps({"type": "cancel", "conversation_id": "c"}))
        for device in (phone, laptop):
            await device.wait_for(lambda d=device: ("cancelled", "q1") in finals(d))
        await _resume(phone, "q1", "too late")
        assert (await phone.wait_frame("error", client_msg_id="q1"))["code"] == "not_interrupted"
        # The graph's state is as if the cancelled turn never ran: this is its second turn.
        await phone.send("c", "q2", "ask:1 and now?")
        await phone.wait_for(lambda: _asked(phone, "q2"))
        await laptop.send("c", "instead", "never mind", if_busy="interrupt")
        for device in (phone, laptop):
            reply = await device.wait_reply("instead")
            assert reply["text"] == "reply 2 to: never mind"
        await asyncio.sleep(0.3)
        for device in (phone, laptop):
            assert finals(device) == [("assistant", "first"), ("cancelled", "q1"), ("cancelled", "q2"),
                                       ("assistant", "instead")]
        assert (await _listed(laptop))["c"]["pending_interrupt"] is None
        await laptop.send_raw(json.dumps({"type": "history", "conversation_id": "c"}))
        history = await laptop.wait_frame("history")
        assert [m["text"] for m in history["messages"]] == ["hello", "reply 1 to: hello", "never mind",
                                                            "reply 2 to: never mind"]
    finally:
        await phone.close()
        await laptop.close()
