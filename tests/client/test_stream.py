"""The position across reconnects (no event twice, gaps surfaced) and the bounded buffer."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.client.stream import EventBuffer, Gap, Item, Tracker
from switchboard.shared.protocol import Event, Welcome


def _event(entry: str, text: str = "x") -> Event:
    return Event(id=entry, conversation_id="c", kind="user", text=text)


def _welcome(epoch: str, resume_from: str, recovered: bool) -> Welcome:
    return Welcome(user_id="u", device_id="d", epoch=epoch, resume_from=resume_from, recovered=recovered)


def test_events_at_or_before_the_newest_received_are_dropped_across_the_seam():
    tracker = Tracker()
    assert tracker.welcome(_welcome("e1", "0-0", True)) is None
    assert [tracker.is_new(_event(i)) for i in ("1-0", "2-0", "10-0")] == [True, True, True]
    assert (tracker.epoch, tracker.last_id) == ("e1", "10-0")  # what the next hello sends
    assert tracker.welcome(_welcome("e1", "10-0", True)) is None
    # ids compare as numbers, not as strings ("9-0" < "10-0")
    assert [tracker.is_new(_event(i)) for i in ("9-0", "10-0", "10-1", "11-0")] == [False, False, True, True]


def test_recovered_false_is_a_gap_and_what_follows_it_is_new():
    tracker = Tracker("e1", "50-0")
    gap = tracker.welcome(_welcome("e2", "3-0", False))  # another life of the stream
    assert gap == Gap("e2", "3-0")
    assert tracker.is_new(_event("4-0"))  # lower than the old position, but of the new life


async def test_the_buffer_is_bounded_by_count_and_bytes_and_the_first_always_fits():
    buffer = EventBuffer(max_items=2, max_bytes=1000)
    await buffer.put(Item("e", _event("1-0", "a" * 5000)))  # alone, larger than the byte bound: fits
    blocked = asyncio.create_task(buffer.put(Item("e", _event("2-0"))))
    await asyncio.sleep(0)
    assert not blocked.done() and len(buffer) == 1
    assert (await buffer.get()).value.id == "1-0"
    await asyncio.wait_for(blocked, 1)
    await buffer.put(Item("e", _event("3-0")))
    third = asyncio.create_task(buffer.put(Item("e", _event("4-0"))))
    await asyncio.sleep(0)
    assert not third.done() and len(buffer) == 2  # the count bound
    await buffer.get()
    await asyncio.wait_for(third, 1)


async def test_an_ended_buffer_drains_then_ends_or_raises():
    buffer = EventBuffer()
    await buffer.put(Item("e", _event("1-0")))
    await buffer.end(RuntimeError("closed 4005"))
    assert (await buffer.get()).value.id == "1-0"
    with pytest.raises(RuntimeError):
        await buffer.get()
    quiet = EventBuffer()
    await quiet.end()
    assert await quiet.get() is None
