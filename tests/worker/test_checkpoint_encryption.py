"""Encrypted checkpoints (ENCRYPTION_KEYS), against a real Redis: no plain
text in any document the worker or the library writes; a stock
``AsyncRedisSaver`` given Switchboard's serializer and the keys reads them
as the worker wrote them, and one without the keys still lists them; a turn
seals only what it adds; older plain checkpoints and rotated keys read on; a
checkpoint no key opens fails the turn clearly."""

import json
import time
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import interrupt

from switchboard.gateway.history import HistoryReader
from switchboard.shared import keys
from switchboard.shared.checkpoints import (
    CachingSerializer, SwitchboardRedisSaver, is_envelope, setup_saver, use_caching_serializer,
)
from switchboard.shared.encryption import CannotOpen, Keyring, generate_key
from switchboard.shared.settings import WorkerSettings
from switchboard.worker import checkpoint_format
from switchboard.worker.fencing import FencedRedisSaver
from switchboard.worker.graph import build
from switchboard.worker.turns import Turns
from tests.support.plaintext import contains

USER = "u"
A, B, C = generate_key(), generate_key(), generate_key()
MARKER = "4111-1111-1111-1111"
WORD = "zanzibarite"  #: a word the default graph keeps in its state (keywords, topic)


class CountingKeyring(Keyring):
    """A keyring that counts what it seals."""

    def __init__(self, keys_):
        super().__init__(keys_)
        self.sealed = 0

    def seal_bytes(self, data: bytes) -> str:
        self.sealed += 1
        return super().seal_bytes(data)


async def _worker(redis, raw, keyring: Keyring, graph: StateGraph | None = None, **settings) -> Turns:
    """A worker's turns with ENCRYPTION_KEYS, its saver built as ``serve`` builds it."""
    settings = replace(WorkerSettings(), encryption=keyring, **settings)
    saver = FencedRedisSaver(redis_client=raw, cache_size=settings.checkpoint_cache, keyring=keyring)
    await setup_saver(saver)
    return Turns(redis, (graph or build()).compile(checkpointer=saver), settings)


async def _say(turns: Turns, conversation: str, text: str) -> dict:
    """An inbound entry as the gateway stores it (sealed), drained; the reply's
    outbound fields."""
    redis = turns.store.redis
    entry = await redis.xadd(keys.inbound(USER, conversation),
                             {"cmid": f"{conversation}-{time.monotonic_ns()}", "dev": "d",
                              "text": turns.store.keyring.seal(text)})
    assert await turns.drain(USER, conversation) is True
    [reply] = [fields for _, fields in await redis.xrange(keys.outbound(USER)) if fields["in"] == entry]
    return reply


async def _stock(raw, keyring: Keyring | None = None) -> AsyncRedisSaver:
    """A plain library saver (an admin tool); with ``keyring``, given Switchboard's serializer."""
    saver = AsyncRedisSaver(redis_client=raw)
    if keyring is not None:
        use_caching_serializer(saver, keyring)
    await saver.asetup()
    return saver


async def _documents(raw) -> dict[bytes, bytes]:
    """Every JSON document in Redis (checkpoints and pending writes), as
    stored: JSON text, read on a client of its own (``client.json()`` makes
    redis-py parse the replies of the client it is called on)."""
    client = aioredis.Redis(connection_pool=aioredis.ConnectionPool(**raw.connection_pool.connection_kwargs))
    try:
        found = {key: await client.execute_command("JSON.GET", key) for key in await client.keys("*")
                 if await client.type(key) == b"ReJSON-RL"}
    finally:
        await client.aclose()
    assert all(isinstance(body, bytes) for body in found.values())
    return found


def _leaks(documents: dict[bytes, bytes], *markers: str) -> list[bytes]:
    """The documents holding a marker readable (also inside a base64 blob)."""
    return [key for key, body in documents.items() if any(contains(body, m) for m in markers)]


def _texts(messages) -> list[tuple[str, str]]:
    return [(m.type, m.content) for m in messages]


# -- sealed, and read back by a stock saver -----------------------------------------------


async def test_the_worker_checkpoint_holds_no_plain_text_and_a_stock_saver_with_the_keys_reads_it(redis, raw):
    ring = Keyring([A])
    turns = await _worker(redis, raw, ring)
    replies = [ring.open((await _say(turns, "a", text))["text"])
               for text in (f"my card is {MARKER}, {WORD}", f"more about {WORD}", "and then")]
    assert MARKER in replies[0]
    documents = await _documents(raw)
    assert documents and not _leaks(documents, MARKER, WORD, "You said")
    thread = keys.thread_id(USER, "a")
    kept = turns.saver._newest[thread]

    stock = await _stock(raw, ring)
    read = await stock.aget_tuple({"configurable": {"thread_id": thread}})
    assert read.checkpoint["id"] == kept.checkpoint["id"]
    assert read.checkpoint["channel_values"] == kept.checkpoint["channel_values"]  # messages and the rest
    assert _texts(read.checkpoint["channel_values"]["messages"])[:2] == [
        ("human", f"my card is {MARKER}, {WORD}"), ("ai", replies[0])]
    assert read.checkpoint["channel_values"]["topic"] == WORD
    listed = [t async for t in stock.alist({"configurable": {"thread_id": thread}})]
    assert [t.checkpoint["channel_values"]["turn"] for t in listed] == [3, 2, 1]

    # Without the keys a stock saver still lists the checkpoints (ids, parents,
    # metadata), their content sealed.
    keyless = [t async for t in (await _stock(raw)).alist({"configurable": {"thread_id": thread}})]
    assert [t.checkpoint["id"] for t in keyless] == [t.checkpoint["id"] for t in listed]
    assert [t.metadata for t in keyless] == [t.metadata for t in listed]
    values = keyless[0].checkpoint["channel_values"]
    assert is_envelope(values["topic"]) and all(is_envelope(m) for m in values["messages"])
    assert MARKER not in json.dumps(values)


async def test_the_worker_document_is_the_librarys_field_for_field_once_opened(raw):
    """The library's ``aput`` through Switchboard's saver (a subgraph's or an
    operator's write) seals the same way: opened, its document equals the
    worker's for the same checkpoint."""
    ring = Keyring([A])
    captured = []

    class Recording(SwitchboardRedisSaver):
        async def aput(self, config, checkpoint, metadata, new_versions):  # noqa: ANN001
            captured.append((config, checkpoint, metadata))
            return await super().aput(config, checkpoint, metadata, new_versions)

    library = use_caching_serializer(Recording(redis_client=raw), ring)
    await setup_saver(library)
    graph = build().compile(checkpointer=library)
    for n in range(3):
        await graph.ainvoke({"messages": [HumanMessage(f"{WORD} {n} {MARKER}", id=f"in-{n}")]},
                            {"configurable": {"thread_id": "t"}}, durability="exit")
    assert not _leaks(await _documents(raw), MARKER, WORD)
    ours = FencedRedisSaver(redis_client=raw, keyring=ring)
    serde: CachingSerializer = ours.serde

    def opened(value):
        if is_envelope(value):
            return serde.open_value(value)
        if isinstance(value, list):
            return [opened(v) for v in value]
        return value

    for config, checkpoint, metadata in captured:
        written = checkpoint_format.document(ours, config, checkpoint, metadata)
        stored = await raw.json().get(written.key)
        mine = json.loads(written.body)
        for document in (stored, mine):
            document.pop("checkpoint_ts")
            values = document["checkpoint"]["channel_values"]
            assert values and all(is_envelope(v) or all(map(is_envelope, v)) for v in values.values())
            document["checkpoint"]["channel_values"] = {k: opened(v) for k, v in values.items()}
        assert mine == stored
    assert len(captured) == 3


async def test_a_turn_seals_only_what_it_adds_however_long_the_conversation(redis, raw):
    """Messages are sealed once, when first encoded: the worker's kept
    encodings hold the sealed form. So turn 40 seals what turn 2 seals."""
    ring = CountingKeyring([A])
    turns = await _worker(redis, raw, ring)
    per_turn = []
    for n in range(40):
        before = ring.sealed
        await _say(turns, "a", f"message {n} about {WORD}")
        per_turn.append(ring.sealed - before)
    # Each turn: the inbound text (the test's), the reply event, two new
    # messages and the graph's five other channel values.
    assert per_turn[1:] == [1 + 1 + 2 + 5] * 39
    assert turns.saver.hits == 39


# -- what the library writes itself -----------------------------------------------------------


def _approving() -> StateGraph:
    async def answer(state: MessagesState) -> dict:
        text = state["messages"][-1].content
        if "approve" in text:
            decision = interrupt(f"approve {text!r}?")
            return {"messages": [AIMessage(f"approved: {decision}")]}
        return {"messages": [AIMessage(f"noted: {text}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    return builder


async def test_pending_writes_are_sealed_and_read_back_with_the_keys(redis, raw):
    ring = Keyring([A])
    turns = await _worker(redis, raw, ring, graph=_approving())
    await _say(turns, "a", "hello")
    asked = await _say(turns, "a", f"please approve {MARKER}")
    assert asked["kind"] == "interrupt" and MARKER not in asked["text"]
    assert json.loads(ring.open(asked["text"]))["value"] == f"approve 'please approve {MARKER}'?"
    documents = await _documents(raw)
    assert any(b"checkpoint_write:" in key for key in documents) and not _leaks(documents, MARKER)
    thread = {"configurable": {"thread_id": keys.thread_id(USER, "a")}}
    read = await (await _stock(raw, ring)).aget_tuple(thread)
    assert [(channel, [i.value for i in value]) for _, channel, value in read.pending_writes] == [
        ("__interrupt__", [f"approve 'please approve {MARKER}'?"])]
    state = await _approving().compile(checkpointer=await _stock(raw, ring)).aget_state(thread)
    assert state.next == ("answer",) and [i.value for i in state.interrupts] == [f"approve 'please approve {MARKER}'?"]


class NotingState(MessagesState):
    note: str


async def test_a_subgraphs_own_checkpoints_are_sealed(redis, raw):
    """A subgraph with its own checkpointer writes through the library's
    ``aput``: its messages and its other channel values are sealed too."""

    async def inner(state: NotingState) -> dict:
        text = state["messages"][-1].content
        return {"messages": [AIMessage(f"inside: {text}")], "note": f"noted {text.upper()}"}

    sub = StateGraph(NotingState)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    sub.add_edge("inner", END)
    parent = StateGraph(NotingState)
    parent.add_node("sub", sub.compile(checkpointer=True))  # its own checkpoints, through the library
    parent.add_edge(START, "sub")
    parent.add_edge("sub", END)
    ring = Keyring([A])
    turns = await _worker(redis, raw, ring, graph=parent)
    assert ring.open((await _say(turns, "a", f"hi {MARKER}"))["text"]) == f"inside: hi {MARKER}"
    documents = await _documents(raw)
    assert any(b":sub" in key for key in documents)  # the subgraph's namespace
    assert not _leaks(documents, MARKER, f"HI {MARKER}")


# -- mixed data, rotation, and keys that do not open ----------------------------------------------


async def test_a_conversation_begun_without_keys_goes_on_with_them_and_keys_rotate(redis, raw):
    plain = await _worker(redis, raw, Keyring())
    first = await _say(plain, "a", f"{WORD} before encryption")
    assert WORD in first["text"] and _leaks(await _documents(raw), WORD)  # written in the clear

    sealed_a = await _worker(redis, raw, Keyring([A]))
    second = await _say(sealed_a, "a", "with key A")
    assert Keyring([A]).open(second["text"]).startswith("Turn 2.")  # the plain state read on
    rotated = await _worker(redis, raw, Keyring([B, A]))
    third = await _say(rotated, "a", "after the rotation")
    assert Keyring([B]).open(third["text"]).startswith("Turn 3.")  # A's state opened; sealed with B now
    thread = keys.thread_id(USER, "a")
    newest = await raw.json().get(checkpoint_format.checkpoint_key(
        rotated.saver, thread, rotated.saver._newest[thread].checkpoint["id"]))
    topic = newest["checkpoint"]["channel_values"]["topic"]
    assert CachingSerializer(keyring=Keyring([B])).open_value(topic) == WORD
    # The state read from Redis was written back whole: every message, even
    # the first, is sealed with B now.
    only_b = CachingSerializer(keyring=Keyring([B]))
    assert [m.content for m in map(only_b.open_value, newest["checkpoint"]["channel_values"]["messages"])][::2] == [
        f"{WORD} before encryption", "with key A", "after the rotation"]
    with pytest.raises(CannotOpen):
        CachingSerializer(keyring=Keyring([A])).open_value(topic)
    history = HistoryReader(use_caching_serializer(SwitchboardRedisSaver(redis_client=raw), Keyring([B, A])))
    assert [m.text for m in await history.read(USER, "a", 10)][::2] == [
        f"{WORD} before encryption", "with key A", "after the rotation"]


@pytest.mark.parametrize("keyring", [Keyring([C]), Keyring()], ids=["another key", "no keys"])
async def test_a_checkpoint_no_key_opens_fails_the_turn_and_the_history_clearly(redis, raw, keyring):
    await _say(await _worker(redis, raw, Keyring([A])), "a", "hello")
    other = await _worker(redis, raw, keyring)
    reply = await _say(other, "a", "and now?")
    assert reply["kind"] == "turn_error"
    assert keyring.open(reply["text"]) == "the assistant cannot read this conversation's stored state"
    [(_, dead)] = await redis.xrange(keys.dead_letters())
    assert dead["attempts"] == "1"  # not retried: it would not open on a retry either
    assert "cannot be decrypted" in keyring.open(dead["reason"])
    history = HistoryReader(use_caching_serializer(SwitchboardRedisSaver(redis_client=raw), keyring))
    with pytest.raises(CannotOpen):
        await history.read(USER, "a", 10)
    assert _texts([m for m in (await (await _stock(raw, Keyring([A]))).aget_tuple(
        {"configurable": {"thread_id": keys.thread_id(USER, "a")}})).checkpoint["channel_values"]["messages"]]) == [
        ("human", "hello"), ("ai", 'Turn 1. You said: "hello". This is the start of our conversation.')]


async def test_a_message_no_key_opens_is_dead_lettered_at_once_as_stored(redis, raw):
    sealed = Keyring([A]).seal(f"secret {MARKER}")
    turns = await _worker(redis, raw, Keyring([C]), max_attempts=3)
    entry = await redis.xadd(keys.inbound(USER, "a"), {"cmid": "m1", "dev": "d", "text": sealed})
    assert await turns.drain(USER, "a") is True
    [(_, reply)] = await redis.xrange(keys.outbound(USER))
    assert reply["kind"] == "turn_error" and reply["in"] == entry
    [(_, dead)] = await redis.xrange(keys.dead_letters())
    assert dead["attempts"] == "1" and dead["text"] == sealed  # kept for whoever still has key A
    assert Keyring([A]).open(dead["text"]) == f"secret {MARKER}"
    assert "message cannot be decrypted" in Keyring([C]).open(dead["reason"])


async def test_a_dead_letter_keeps_its_first_thousand_characters_sealed(redis, raw):
    ring = Keyring([A])
    turns = await _worker(redis, raw, ring)
    entry = await redis.xadd(keys.inbound(USER, "a"), {"cmid": "m1", "dev": "d", "text": ring.seal("ü" * 5000)})
    [(_, found)] = await redis.xrange(keys.inbound(USER, "a"))
    from switchboard.worker.store import InboundEntry

    await turns.store.dead_letter(user=USER, entry=InboundEntry(entry, "a", "m1", "d", found["text"]),
                                  reason=f"ValueError: bad {MARKER}", attempts=3, worker="w", maxlen=10)
    [(_, dead)] = await redis.xrange(keys.dead_letters())
    assert ring.open(dead["text"]) == "ü" * 1000 and ring.open(dead["reason"]) == f"ValueError: bad {MARKER}"
    assert MARKER not in json.dumps(dead)
