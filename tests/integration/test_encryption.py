"""Encryption at rest through real processes: with ENCRYPTION_KEYS, a card
number sent in a message, echoed in the reply, streamed in deltas, kept in
the conversation's state and dead-lettered is found nowhere in Redis -- no
key of any type, no base64 blob -- nor in its AOF files on disk, before and
after an AOF rewrite; devices still see it, live, in history and in replay.
The same run without keys finds it in every one of those places (the scan
works). Keys rotate: data sealed with A reads on after "B,A", new data is
sealed with B, and a key list without A fails clearly, never a crash."""

from __future__ import annotations

import json
import os
import random
import signal
import string
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio as aioredis
from langgraph.checkpoint.redis.aio import AsyncRedisSaver

from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.shared import keys
from switchboard.shared.checkpoints import use_caching_serializer
from switchboard.shared.encryption import Keyring, generate_key
from tests.support.client import Device, new_user
from tests.support.cluster import Cluster, token
from tests.support.plaintext import contains

GRAPH = "tests.support.graphs:guarded_streaming"


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own, so its AOF holds this test's writes only.
    Its RDB-format rewrite stores strings uncompressed: LZF would hide plain
    text from a byte search, not from an attacker."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    client = redis.Redis.from_url(server.url)
    client.config_set("rdbcompression", "no")
    client.close()
    yield server
    server.stop()


@pytest.fixture
def stack(own_redis, tmp_path, request):
    services = tmp_path / "services"
    services.mkdir()
    cluster = Cluster(own_redis.url, services, env={"GRAPH": GRAPH, "MAX_ATTEMPTS": "1"})
    try:
        yield cluster
    finally:
        cluster.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())


def _markers() -> tuple[str, str]:
    """A card-number-like marker and a word the graph keeps in its state
    (keywords, topic), unique to this run."""
    rng = random.Random()
    card = "4111-" + "-".join(f"{rng.randrange(10_000):04d}" for _ in range(3))
    return card, "zq" + "".join(rng.choice(string.ascii_lowercase) for _ in range(10))


# -- scanning what is at rest -------------------------------------------------------------


def _dump(client: redis.Redis, key: bytes) -> bytes:
    """Everything a key holds, by type (its bytes as Redis returns them)."""
    kind = client.type(key).decode()
    if kind == "none":  # gone since the SCAN (an admission slot released, a TTL)
        return key
    if kind == "stream":
        parts = [b"".join(k + v for k, v in fields.items()) for _, fields in client.xrange(key)]
    elif kind == "hash":
        parts = [k + v for k, v in client.hgetall(key).items()]
    elif kind == "string":
        parts = [client.get(key) or b""]
    elif kind == "ReJSON-RL":
        parts = [client.execute_command("JSON.GET", key)]  # JSON text: this client never called .json()
    elif kind == "zset":
        parts = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "set":
        parts = list(client.smembers(key))
    elif kind == "list":
        parts = client.lrange(key, 0, -1)
    else:
        raise AssertionError(f"{key!r}: a key type the scan does not read: {kind}")
    return key + b"\n" + b"\n".join(parts)


def _redis_hits(url: str, *markers: str) -> list[str]:
    """The keys whose content holds a marker readable (plain, JSON-escaped or in base64)."""
    client = redis.Redis.from_url(url)
    try:
        scanned = [(key, _dump(client, key)) for key in client.scan_iter(count=1000)]
    finally:
        client.close()
    assert len(scanned) > 10, "the scan read too little"
    return sorted(key.decode() for key, data in scanned if any(contains(data, m) for m in markers))


def _aof_hits(server: EmbeddedRedis, *markers: str) -> list[str]:
    files = sorted((server.data_dir / "appendonlydir").iterdir())
    assert files and sum(f.stat().st_size for f in files) > 10_000, "no AOF to scan"
    return [f.name for f in files if any(contains(f.read_bytes(), m) for m in markers)]


def _rewrite_aof(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.bgrewriteaof()
        deadline = time.monotonic() + 30
        while True:
            info = client.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            assert time.monotonic() < deadline, "the AOF rewrite did not finish"
            time.sleep(0.05)
        assert info["aof_last_bgrewrite_status"] == "ok"
    finally:
        client.close()


def _kind(key: str) -> str:
    for prefix, kind in (("checkpoint_write:", "pending write"), ("checkpoint:", "checkpoint"),
                         ("sb:deadletters", "dead letters")):  # a user's copies of them: "dead"
        if key.startswith(prefix):
            return kind
    if ":conv:" in key:
        return "title"  # a conversation's title: the start of its first message
    return key.rsplit(":", 2)[-2] if ":in:" in key else key.rsplit(":", 1)[-1]


# -- the devices' view, and nothing readable at rest ----------------------------------------


async def _history(device: Device, conversation: str) -> dict:
    await device.send_raw(json.dumps({"type": "history", "conversation_id": conversation}))
    frame = await device.wait_for(lambda: next((f for f in device.frames if f["type"] == "history"
                                                 or (f["type"] == "error" and "history" in f["message"])), None))
    device.frames.remove(frame)
    if frame["type"] == "history":  # what is said, not the messages' ids
        frame = {**frame, "messages": [{"role": m["role"], "text": m["text"]} for m in frame["messages"]]}
    return frame


@pytest.mark.parametrize("encrypted", [True, False], ids=["keys", "no keys: the scan finds the text"])
async def test_message_text_is_nowhere_at_rest_and_devices_see_it(stack, own_redis, encrypted):
    card, word = _markers()
    text = f"my card is {card}, codeword {word}"
    key = generate_key()
    stack.start_many(("fanout", "f"), ("worker", "w"), ("gateway", "gw"),
                     **({"ENCRYPTION_KEYS": key} if encrypted else {}))
    user = new_user()
    phone = Device(stack.services["gw"].url, token(user), "phone")
    await phone.connect()

    await phone.send("c", "m1", text)
    reply = await phone.wait_reply("m1")
    assert reply["kind"] == "assistant" and text in reply["text"]
    deltas = [e["text"] for e in phone.events if e["kind"] == "delta" and e["client_msg_id"] == "m1"]
    assert len(deltas) > 1 and card in "".join(deltas)  # streamed, in pieces
    await phone.send("c", "m2", "and what did I say before?")  # the state keeps the text a second turn
    assert (await phone.wait_reply("m2"))["kind"] == "assistant"
    await phone.send("c", "m3", f"fail {text}")  # a poison message, its text in the graph's error
    assert (await phone.wait_reply("m3"))["kind"] == "turn_error"
    history = await _history(phone, "c")
    assert history["type"] == "history" and history["messages"][:2] == [
        {"role": "user", "text": text}, {"role": "assistant", "text": reply["text"]}]

    # Replay after a reconnect: everything after the user's first event, readable.
    first = phone.events[0]
    await phone.close()
    await phone.connect(last_id=first["id"], epoch=phone.welcome["epoch"])
    replayed = await phone.wait_for(lambda: [e for e in phone.frames if e["type"] == "event"
                                             and e["kind"] == "turn_error"])
    assert [f for f in phone.frames if f["type"] == "event" and f["id"] == reply["id"]][0]["text"] == reply["text"]
    assert replayed and not [f for f in phone.frames if f["type"] == "error"]

    # A message still waiting for its turn (no worker now): its inbound entry is at rest too.
    assert stack.kill("w", signal.SIGTERM)
    await phone.send("c", "m4", f"waiting: {text}")
    await phone.wait_frame("accepted", client_msg_id="m4")
    await phone.wait_for(lambda: [e for e in phone.events if e["client_msg_id"] == "m4"])
    assert [e for e in phone.events if e["client_msg_id"] == "m4"][0]["text"] == f"waiting: {text}"
    await phone.close()

    found = _redis_hits(own_redis.url, card, word)
    aof = _aof_hits(own_redis, card, word)
    _rewrite_aof(own_redis.url)
    rewritten = _aof_hits(own_redis, card, word)
    if encrypted:
        assert (found, aof, rewritten) == ([], [], [])
        # A stock saver given Switchboard's serializer and the key reads the
        # conversation as the history showed it.
        client = aioredis.Redis.from_url(own_redis.url)
        saver = use_caching_serializer(AsyncRedisSaver(redis_client=client), Keyring([key]))
        state = await saver.aget_tuple({"configurable": {"thread_id": keys.thread_id(user, "c")}})
        await client.aclose()
        assert [m.content for m in state.checkpoint["channel_values"]["messages"]][:2] == [text, reply["text"]]
        assert word in state.checkpoint["channel_values"]["keywords"]
        # The operator's view of the dead letter: opened with the key, named unreadable without.
        for keys_, expected in ((key, None), ("", ["text", "reason"])):
            out = subprocess.run([sys.executable, "-m", "switchboard.cli", "deadletters"], capture_output=True,
                                 text=True, check=True, timeout=30,
                                 env={**os.environ, "REDIS_URL": own_redis.url, "ENCRYPTION_KEYS": keys_})
            [dead] = [json.loads(line) for line in out.stdout.splitlines()]
            assert dead["cmid"] == "m3" and dead.get("unreadable") == expected
            assert (card in dead["text"] and card in dead["reason"]) is (expected is None)
    else:
        # Every place the attack found the card number, and the AOF before
        # and after the rewrite.
        assert {_kind(k) for k in found} == {"in", "out", "checkpoint", "dead letters", "dead", "title"}, found
        assert aof and any(name.endswith(".incr.aof") for name in aof)
        assert any(name.endswith(".base.rdb") for name in rewritten), rewritten


# -- rotation ---------------------------------------------------------------------------------


def _texts_of(url: str, user: str) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return [(fields["kind"], fields["text"]) for _, fields in client.xrange(keys.outbound(user))]
    finally:
        client.close()


def _opens(keyring: Keyring, sealed: str) -> bool:
    try:
        keyring.open(sealed)
    except Exception:  # noqa: BLE001 - CannotOpen
        return False
    return True


def _restart(stack: Cluster, old: tuple[str, str], new: tuple[str, str], keys_: str) -> None:
    """Gateway and worker stopped (SIGTERM) and started again with other ENCRYPTION_KEYS."""
    for name in old:
        assert stack.kill(name, signal.SIGTERM)
    stack.start_many(("worker", new[0]), ("gateway", new[1]), ENCRYPTION_KEYS=keys_)


async def test_keys_rotate_and_a_list_without_the_old_key_fails_clearly(stack, own_redis):
    a, b, c = generate_key(), generate_key(), generate_key()
    stack.start_many(("fanout", "f"), ("worker", "w1"), ("gateway", "g1"), ENCRYPTION_KEYS=a)
    user = new_user()
    phone = Device(stack.services["g1"].url, token(user), "phone")
    await phone.connect()
    await phone.send("c", "m1", "written with key A")
    old_reply = (await phone.wait_reply("m1"))["text"]
    await phone.close()
    written_with_a = _texts_of(own_redis.url, user)
    assert all(_opens(Keyring([a]), t) and not _opens(Keyring([b]), t) for _, t in written_with_a)

    # "B,A": A's data reads on -- history, replay -- and new data is sealed with B.
    _restart(stack, ("w1", "g1"), ("w2", "g2"), f"{b},{a}")
    tablet = Device(stack.services["g2"].url, token(user), "tablet")
    await tablet.connect()  # a new device: the replay window, all of it sealed with A
    await tablet.wait_for(lambda: len(tablet.events) == len(written_with_a))
    assert [e["text"] for e in tablet.events if e["kind"] != "delta"] == ["written with key A", old_reply]
    assert (await _history(tablet, "c"))["messages"] == [
        {"role": "user", "text": "written with key A"}, {"role": "assistant", "text": old_reply}]
    await tablet.send("c", "m2", "after the rotation")
    assert (await tablet.wait_reply("m2"))["text"].startswith("Turn 2.")  # A's state, opened
    await tablet.close()
    written_with_b = _texts_of(own_redis.url, user)[len(written_with_a):]
    assert written_with_b and all(_opens(Keyring([b]), t) and not _opens(Keyring([a]), t)
                                  for _, t in written_with_b)

    # C alone: A's and B's data cannot be read -- a clear failure for each
    # thing that needs it, and the services go on.
    _restart(stack, ("w2", "g2"), ("w3", "g3"), c)
    laptop = Device(stack.services["g3"].url, token(user), "laptop")
    await laptop.connect()
    stored = len(_texts_of(own_redis.url, user))
    await laptop.wait_for(lambda: len([f for f in laptop.frames if f["type"] == "error"]) == stored)
    errors = [f for f in laptop.frames if f["type"] == "error"]
    assert {e["code"] for e in errors} == {"unreadable"} and not laptop.events  # never the ciphertext
    assert [e["client_msg_id"] for e in errors if e["client_msg_id"]][:1] == ["m1"]
    laptop.frames.clear()
    history = await _history(laptop, "c")
    assert (history["type"], history["code"]) == ("error", "unreadable")
    await laptop.send("c", "m3", "and now?")  # the conversation's state is sealed with B
    failed = await laptop.wait_reply("m3")
    assert (failed["kind"], failed["text"]) == (
        "turn_error", "the assistant cannot read this conversation's stored state")
    await laptop.send("fresh", "m4", "a new conversation")
    assert (await laptop.wait_reply("m4"))["text"].startswith("Turn 1.")
    await laptop.close()
    for name in ("f", "w3", "g3"):
        assert stack.services[name].process.poll() is None, f"{name} exited"
        assert "Traceback" not in stack.services[name].log_text(), name
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    dead = client.xrange(keys.dead_letters())
    client.close()
    assert [(f["cmid"], f["attempts"]) for _, f in dead] == [("m3", "1")]
    assert "cannot be decrypted" in Keyring([c]).open(dead[0][1]["reason"])
