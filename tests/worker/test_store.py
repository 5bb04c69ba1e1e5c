"""Each branch of the worker's scripts, through WorkerStore, on a real Redis."""

import msgspec
import pytest

from switchboard.shared import keys
from switchboard.shared.fields import ConvField
from switchboard.shared.settings import StreamSettings
from switchboard.worker.store import (
    AlreadyDone, Attempt, Begun, Busy, CheckpointWrite, Committed, DoneMoved, LeaseLost, NoneLeft, WorkerStore,
)

LATEST = "checkpoint_latest:{u:u}/a:"  # any key of the user's slot stands for the pointer here
INDEX = keys.thread_checkpoints(keys.thread_id("u", "a"))


@pytest.fixture
def store(redis) -> WorkerStore:
    return WorkerStore(redis, StreamSettings(outbound_maxlen=1000), lease_ttl=10.0)


async def _send(redis, conv: str, text: str) -> str:
    """Append as the gateway's accept does (its waiting count too)."""
    await redis.hincrby(keys.usage("u"), "waiting", 1)
    return await redis.xadd(keys.inbound("u", conv), {"cmid": text, "dev": "d", "text": text})


def _fields(text: str, entry_id: str) -> list[str]:
    return ["kind", "assistant", "conv", "a", "text", text, "cmid", "", "dev", "", "ts", "1", "in", entry_id]


async def test_begin_takes_the_lease_and_the_first_entry_or_says_who_holds_it(redis, store):
    first = await _send(redis, "a", "hello")
    begun = await store.begin("u", "a", token="t1", latest_key=LATEST)
    assert isinstance(begun, Begun) and begun.done == "0-0" and begun.latest is None
    assert begun.found == Attempt(begun.found.entry, 1) and begun.found.entry.id == first
    assert begun.found.entry.text == "hello" and begun.found.entry.client_msg_id == "hello"
    assert await redis.get(keys.lease("u", "a")) == "t1"
    assert 9000 < await redis.pttl(keys.lease("u", "a")) <= 10_000
    assert await store.begin("u", "a", token="t2", latest_key=LATEST) == Busy("t1")


async def test_begin_repeated_with_its_own_token_is_the_same_taking_and_the_same_attempt(redis, store):
    await _send(redis, "a", "hello")
    one = await store.begin("u", "a", token="t1", latest_key=LATEST)
    again = await store.begin("u", "a", token="t1", latest_key=LATEST)  # a retried call whose answer was lost
    assert isinstance(again, Begun) and again.found == one.found  # attempt 1 both times
    assert await store.attempts("u", "a") == (one.found.entry.id, 1)


async def test_attempts_count_once_per_taking_but_not_for_a_resumed_one(redis, store):
    entry = await _send(redis, "a", "hello")
    for token, resumed, expected in [("t1", None, 1), ("t2", None, 2), ("t3", entry, 2), ("t4", None, 3)]:
        begun = await store.begin("u", "a", token=token, latest_key=LATEST, resumed=resumed)
        assert begun.found.number == expected, (token, resumed)
        await store.release("u", "a", token)
    assert await store.attempts("u", "a") == (entry, 3)


async def test_begin_reads_the_latest_checkpoint_pointer(redis, store):
    await redis.set(LATEST, "checkpoint:{u:u}/a::abc")
    begun = await store.begin("u", "a", token="t1", latest_key=LATEST)
    assert begun.latest == "checkpoint:{u:u}/a::abc" and begun.found == NoneLeft()


async def test_a_new_conversation_reads_one_entry_whatever_the_others_hold(redis, store):
    """A conversation's entries are its own stream: its first turn reads one
    entry (commands and bytes do not grow with the user's other backlog)."""
    for n in range(500):
        await _send(redis, "other", f"x{n} " + "y" * 1000)
    mine = await _send(redis, "a", "mine")
    await redis.config_resetstat()
    begun = await store.begin("u", "a", token="t1", latest_key=LATEST)
    assert isinstance(begun.found, Attempt) and begun.found.entry.id == mine
    stats = await redis.info("commandstats")
    assert stats["cmdstat_xrange"]["calls"] == 1
    assert await store.find_next("u", "a", after=mine, token="t1") == NoneLeft()
    found = await store.find_next("u", "a", after="0-0", token="t1")
    assert isinstance(found, Attempt) and found.entry.id == mine and found.number == 1  # same token: same attempt


async def test_count_attempt_moves_on_once_from_the_attempt_seen(redis, store):
    entry = await _send(redis, "a", "hello")
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    assert await store.count_attempt("u", "a", entry, seen=1) == 2
    assert await store.count_attempt("u", "a", entry, seen=1) == 2  # the same call, repeated
    assert await store.count_attempt("u", "a", entry, seen=2) == 3


async def test_commit_writes_the_reply_once_and_releases_the_lease_when_nothing_is_left(redis, store):
    entry = await _send(redis, "a", "hello")
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    checkpoint = CheckpointWrite(key="checkpoint:{u:u}/a::c1", latest_key=LATEST, index=INDEX,
                                 document=msgspec.json.encode({"checkpoint_id": "c1"}), ttl_ms=0)
    result = await store.commit("u", "a", token="t1", expected_done="0-0", entry_id=entry,
                                fields=_fields("hi", entry), checkpoint=checkpoint)
    assert isinstance(result, Committed) and result.released and result.found == NoneLeft()
    assert await redis.get(keys.lease("u", "a")) is None
    assert await redis.hgetall(keys.conversation("u", "a")) == {ConvField.DONE: entry}
    # Answered: the entry leaves the inbound stream, and the user's waiting count.
    assert await redis.xlen(keys.inbound("u", "a")) == 0
    assert await redis.hget(keys.usage("u"), "waiting") == "0"
    [(reply_id, fields)] = await redis.xrange(keys.outbound("u"))
    assert reply_id == result.reply_id and fields["text"] == "hi" and fields["in"] == entry
    assert await redis.get(LATEST) == checkpoint.key
    assert await redis.execute_command("JSON.GET", checkpoint.key, "$.checkpoint_id") == '["c1"]'
    assert await redis.ttl(checkpoint.key) == -1  # no CHECKPOINT_TTL (not the staged key's)
    assert await redis.exists(keys.staged_checkpoint("u", "a", "t1")) == 0  # renamed into place
    assert await redis.zrange(INDEX, 0, -1) == [checkpoint.key]  # listed in its thread's index

    # The same commit again (a retried call whose answer was lost): nothing more is written,
    # and what it staged again is gone.
    again = await store.commit("u", "a", token="t1", expected_done="0-0", entry_id=entry,
                               fields=_fields("hi", entry), checkpoint=checkpoint)
    assert again == AlreadyDone(holds_lease=False)
    assert len(await redis.xrange(keys.outbound("u"))) == 1
    assert await redis.exists(keys.staged_checkpoint("u", "a", "t1")) == 0


async def test_a_commit_that_finds_more_keeps_the_lease_and_names_the_next_entry(redis, store):
    first = await _send(redis, "a", "one")
    second = await _send(redis, "a", "two")
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    result = await store.commit("u", "a", token="t1", expected_done="0-0", entry_id=first,
                                fields=_fields("r1", first), checkpoint=None)
    assert isinstance(result, Committed) and not result.released
    assert isinstance(result.found, Attempt) and result.found.entry.id == second and result.found.number == 1
    assert await redis.get(keys.lease("u", "a")) == "t1"
    assert [e for e, _ in await redis.xrange(keys.inbound("u", "a"))] == [second]
    assert await redis.hget(keys.usage("u"), "waiting") == "1"
    repeated = await store.commit("u", "a", token="t1", expected_done="0-0", entry_id=first,
                                  fields=_fields("r1", first), checkpoint=None)
    assert repeated == AlreadyDone(holds_lease=True)


async def test_a_commit_without_the_lease_or_from_a_moved_done_writes_nothing(redis, store):
    first = await _send(redis, "a", "one")
    second = await _send(redis, "a", "two")
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    await redis.set(keys.lease("u", "a"), "someone-else")
    checkpoint = CheckpointWrite(key="checkpoint:{u:u}/a::c1", latest_key=LATEST, index=INDEX, document=b'{"a": 1}',
                                 ttl_ms=0)
    lost = await store.commit("u", "a", token="t1", expected_done="0-0", entry_id=first,
                              fields=_fields("r1", first), checkpoint=checkpoint)
    assert lost == LeaseLost()
    await redis.set(keys.lease("u", "a"), "t1")
    await redis.hset(keys.conversation("u", "a"), ConvField.DONE, first)  # another worker moved on
    moved = await store.commit("u", "a", token="t1", expected_done="0-0", entry_id=second,
                               fields=_fields("r2", second), checkpoint=checkpoint)
    assert moved == DoneMoved(first)
    assert await redis.xrange(keys.outbound("u")) == []
    # Neither wrote its checkpoint, nor left the one it staged.
    assert await redis.exists(checkpoint.key, LATEST, keys.staged_checkpoint("u", "a", "t1"), INDEX) == 0


async def test_a_checkpoint_ttl_applies_to_the_document_and_its_pointer(redis, store):
    entry = await _send(redis, "a", "hello")
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    checkpoint = CheckpointWrite(key="checkpoint:{u:u}/a::c1", latest_key=LATEST, index=INDEX, document=b'{"a": 1}',
                                 ttl_ms=60_000)
    await store.commit("u", "a", token="t1", expected_done="0-0", entry_id=entry, fields=_fields("hi", entry),
                       checkpoint=checkpoint)
    assert 0 < await redis.pttl(checkpoint.key) <= 60_000
    assert 0 < await redis.pttl(LATEST) <= 60_000
    assert 0 < await redis.pttl(INDEX) <= 60_000  # the index goes with them
    assert await redis.ttl(keys.conversation("u", "a")) == -1  # `done` never expires


async def test_renew_and_release_only_for_the_holder(redis, store):
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    assert await store.renew("u", "a", "t1") is True
    assert await store.renew("u", "a", "t2") is False
    await store.release("u", "a", "t2")
    assert await redis.get(keys.lease("u", "a")) == "t1"
    await store.release("u", "a", "t1")
    assert await redis.get(keys.lease("u", "a")) is None
    assert await store.renew("u", "a", "t1") is False


async def test_a_delta_is_written_once_per_mark_and_only_by_the_holder(redis, store):
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    fields = ["kind", "delta", "conv", "a", "text", "Hel", "seq", "0"]
    assert await store.write_delta("u", "a", token="t1", mark="s|0", fields=fields) is True
    assert await store.write_delta("u", "a", token="t1", mark="s|0", fields=fields) is True  # repeated
    assert len(await redis.xrange(keys.outbound("u"))) == 1
    assert await store.write_delta("u", "a", token="t1", mark="s|1", fields=fields) is True
    assert await store.write_delta("u", "a", token="t2", mark="s|2", fields=fields) is False
    assert len(await redis.xrange(keys.outbound("u"))) == 2


# -- interrupts (human-in-the-loop) -----------------------------------------------------------


def _asking(entry_id: str) -> list[str]:
    return ["kind", "interrupt", "conv", "a", "text", '{"id":"i1","value":1}', "cmid", "q", "dev", "", "ts", "1",
            "in", entry_id]


async def _interrupt(store, entry: str, token: str, interrupt_id: str, base: str = "-"):
    return await store.commit("u", "a", token=token, expected_done="0-0", entry_id=entry, fields=_asking(entry),
                              checkpoint=None, latest_key=LATEST, interrupt_id=interrupt_id, base=base)


async def test_an_interrupt_holds_its_entry_and_the_queue_until_a_resume(redis, store):
    entry = await _send(redis, "a", "q")
    await _send(redis, "a", "queued")
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    assert isinstance(await _interrupt(store, entry, "t1", "i1"), Committed)
    assert await redis.exists(keys.lease("u", "a")) == 0  # released: nothing runs until the person answers
    conv = await redis.hgetall(keys.conversation("u", "a"))
    assert conv["interrupt"] == f"{entry} i1 q" and conv["base"] == "-" and "done" not in conv
    assert (await store.begin("u", "a", token="t2", latest_key=LATEST)).found == NoneLeft()
    # The commit repeated (its answer lost): already done, nothing written twice.
    assert await _interrupt(store, entry, "t2", "i1") == AlreadyDone(holds_lease=True)
    assert [f["kind"] for _, f in await redis.xrange(keys.outbound("u"))] == ["interrupt"]
    await store.release("u", "a", "t2")
    await redis.hset(keys.conversation("u", "a"), "resume", '"yes"')  # as resume.lua records it
    begun = await store.begin("u", "a", token="t3", latest_key=LATEST)
    assert begun.found.entry.id == entry and begun.found.number == 1  # the resumed run counts afresh
    assert (begun.found.entry.interrupt_id, begun.found.entry.resume) == ("i1", '"yes"')
    answered = await store.commit("u", "a", token="t3", expected_done="0-0", entry_id=entry,
                                  fields=_fields("done", entry), checkpoint=None, latest_key=LATEST)
    assert isinstance(answered, Committed) and answered.found.entry.text == "queued"
    conv = await redis.hgetall(keys.conversation("u", "a"))
    assert not {"interrupt", "interrupt_text", "resume", "base"} & set(conv)


@pytest.mark.parametrize("base", ["-", "checkpoint:{u:u}/a::before"])
async def test_a_cancelled_interrupted_turn_puts_the_latest_pointer_back(redis, store, base):
    entry = await _send(redis, "a", "q")
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    await redis.set(LATEST, "checkpoint:{u:u}/a::interrupted")  # what the interrupt stored
    await _interrupt(store, entry, "t1", "i1", base=base)
    await redis.hset(keys.conversation("u", "a"), "cancel", entry)  # as cancel.lua marks it
    begun = await store.begin("u", "a", token="t2", latest_key=LATEST)
    assert begun.found.cancelled and begun.found.entry.id == entry
    # The worker knows no base now (another process): the one recorded with the interrupt is used.
    result = await store.commit("u", "a", token="t2", expected_done="0-0", entry_id=entry,
                                fields=_fields("", entry), checkpoint=None, latest_key=LATEST)
    assert isinstance(result, Committed) and result.cancelled
    assert await redis.get(LATEST) == (None if base == "-" else base)
    assert [f["kind"] for _, f in await redis.xrange(keys.outbound("u"))] == ["interrupt", "cancelled"]


async def test_a_cancelled_turns_checkpoint_is_dropped_with_its_staging(redis, store):
    """A turn cancelled while it ran commits a `cancelled` event without its
    checkpoint: the document its commit staged is deleted, not placed."""
    entry = await _send(redis, "a", "long")
    await store.begin("u", "a", token="t1", latest_key=LATEST)
    await redis.hset(keys.conversation("u", "a"), "cancel", entry)  # as cancel.lua marks it
    checkpoint = CheckpointWrite(key="checkpoint:{u:u}/a::c1", latest_key=LATEST, index=INDEX, document=b'{"a": 1}',
                                 ttl_ms=0)
    result = await store.commit("u", "a", token="t1", expected_done="0-0", entry_id=entry,
                                fields=_fields("partly", entry), checkpoint=checkpoint)
    assert isinstance(result, Committed) and result.cancelled
    assert await redis.exists(checkpoint.key, LATEST, keys.staged_checkpoint("u", "a", "t1"), INDEX) == 0
