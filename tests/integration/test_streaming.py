"""Streamed replies: ``delta`` events, in order, replayed mid-reply, restarted
after a failed attempt, and never written without the lease."""

from __future__ import annotations

import signal

from tests.support.client import Device, new_user
from tests.support.cluster import token

STREAMING = "switchboard.worker.graph:streaming"
SLOWLY = "tests.support.graphs:streaming_slowly"


def _deltas(device: Device, cmid: str) -> list[dict]:
    return [e for e in device.events if e["kind"] == "delta" and e["client_msg_id"] == cmid]


def _rebuilt(events: list[dict], cmid: str) -> str:
    """What a client shows, by the protocol's rule: ``seq`` 0 starts afresh,
    later deltas append, the final event replaces the lot."""
    text = ""
    for event in events:
        if event.get("client_msg_id") != cmid:
            continue
        if event["kind"] == "delta":
            text = event["text"] if event["seq"] == 0 else text + event["text"]
        elif event["kind"] in ("assistant", "turn_error"):
            text = event["text"]
    return text


def _streamed_text(events: list[dict], cmid: str) -> tuple[str, list[int]]:
    """The last attempt's deltas: their joined text and their seqs."""
    deltas = [e for e in events if e["kind"] == "delta" and e["client_msg_id"] == cmid]
    starts = [i for i, e in enumerate(deltas) if e["seq"] == 0]
    last = deltas[starts[-1]:] if starts else []
    return "".join(e["text"] for e in last), [e["seq"] for e in last]


async def _start(cluster, worker: str, *devices: str, **env: str) -> list[Device]:
    """A fanout, a gateway and a worker (``env``: its settings), and the named
    devices of one new user, connected."""
    cluster.start("fanout")
    cluster.start("gateway", "gw")
    cluster.start("worker", worker, **env)
    user = new_user()
    connected = [Device(cluster.services["gw"].url, token(user), name) for name in devices]
    for device in connected:
        await device.connect()
    return connected


async def test_a_streamed_reply_arrives_as_deltas_then_the_final_event(cluster):
    phone, laptop = await _start(cluster, "w", "phone", "laptop", GRAPH=STREAMING, DELTA_INTERVAL="0")
    await phone.send("c", "m1", "tell me about sailing boats")
    final = await phone.wait_reply("m1")
    await laptop.wait_reply("m1")

    deltas = _deltas(phone, "m1")
    assert len(deltas) >= 5, deltas  # a word every 30 ms, written as soon as each write returns
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert "".join(d["text"] for d in deltas) == final["text"]
    assert final["text"].startswith('Turn 1. You said: "tell me about sailing boats".')
    ids = phone.event_ids()
    assert all(ids.index(d["id"]) < ids.index(final["id"]) for d in deltas)  # no delta after the final
    assert laptop.event_ids() == ids  # every device sees the same events, in the same order
    assert len(phone.replies("m1")) == 1

    # The next turn streams too, from seq 0; the history holds final replies only.
    await phone.send("c", "m2", "and the wind?")
    second = await phone.wait_reply("m2")
    assert "".join(d["text"] for d in _deltas(phone, "m2")) == second["text"]
    await phone.send_raw('{"type": "history", "conversation_id": "c"}')
    history = await phone.wait_frame("history")
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert history["messages"][3]["text"] == second["text"]
    await phone.close()
    await laptop.close()


async def test_a_device_that_drops_mid_reply_resumes_it_exactly(cluster):
    watcher, phone = await _start(cluster, "w", "watcher", "phone", GRAPH=SLOWLY)  # the watcher stays connected
    await phone.send("c", "m1", "tell me a long story about the sea")
    await phone.wait_for(lambda: len(_deltas(phone, "m1")) >= 2)
    await phone.drop()
    seen = len(_deltas(phone, "m1"))
    await watcher.wait_for(lambda: len(_deltas(watcher, "m1")) >= seen + 3)  # the reply went on meanwhile
    assert not watcher.replies("m1")  # ... and is not finished: the phone comes back mid-reply

    await phone.connect(last_id=phone.events[-1]["id"], epoch=phone.welcome["epoch"])
    assert phone.welcome["recovered"] is True
    final = await phone.wait_reply("m1", timeout=30)
    await watcher.wait_reply("m1")
    assert phone.event_ids() == watcher.event_ids()  # nothing missing, nothing twice
    assert _rebuilt(phone.events, "m1") == final["text"]
    assert "".join(d["text"] for d in _deltas(phone, "m1")) == final["text"]
    await phone.close()
    await watcher.close()


async def test_a_worker_killed_mid_reply_streams_it_again_from_seq_0(cluster):
    (phone,) = await _start(cluster, "doomed", "phone", GRAPH=SLOWLY)
    await phone.send("c", "m1", "tell me a long story about the sea")
    await phone.wait_for(lambda: len(_deltas(phone, "m1")) >= 3)
    cluster.kill("doomed", signal.SIGKILL)
    cluster.start("worker", "rescuer", GRAPH=SLOWLY)

    final = await phone.wait_reply("m1", timeout=40)
    assert len(phone.replies("m1")) == 1
    deltas = _deltas(phone, "m1")
    assert [d["seq"] for d in deltas].count(0) == 2  # the second attempt started the reply afresh
    text, seqs = _streamed_text(phone.events, "m1")
    assert seqs == list(range(len(seqs))) and text == final["text"]
    assert _rebuilt(phone.events, "m1") == final["text"]
    ids = phone.event_ids()
    assert len(ids) == len(set(ids))
    await phone.close()


async def test_no_deltas_when_streaming_is_off(cluster):
    (phone,) = await _start(cluster, "w", "phone", GRAPH=STREAMING, STREAM_DELTAS="0")
    await phone.send("c", "m1", "hello there")
    final = await phone.wait_reply("m1")
    assert final["text"].startswith("Turn 1.")
    assert [e["kind"] for e in phone.events] == ["user", "assistant"]
    await phone.close()
