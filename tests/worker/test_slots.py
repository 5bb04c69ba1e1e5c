"""FairSlots: who gets a worker slot that frees."""

import asyncio

import pytest

from switchboard.worker.slots import FairSlots, SlotsClosed


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_free_slots_are_taken_at_once_and_the_rest_wait():
    slots = FairSlots(2)
    await slots.acquire("a")
    await slots.acquire("a")
    third = asyncio.create_task(slots.acquire("a"))
    await _settle()
    assert not third.done() and slots.busy == 2 and slots.waiting == 1
    slots.release()
    await _settle()
    assert third.done() and slots.busy == 2 and slots.waiting == 0
    slots.release()
    slots.release()
    assert slots.busy == 0


async def test_users_take_turns_whatever_their_backlog():
    slots = FairSlots(1)
    await slots.acquire("heavy")
    order: list[str] = []

    async def wait(user: str, n: int) -> None:
        await slots.acquire(user)
        order.append(f"{user}{n}")

    tasks = [asyncio.create_task(wait("heavy", n)) for n in range(5)]
    await _settle()
    tasks.append(asyncio.create_task(wait("light", 0)))
    await _settle()
    for _ in range(6):
        slots.release()
        await _settle()
    # The light user arrived behind five waiters of the heavy one, and got
    # the second slot to free, not the sixth.
    assert order == ["heavy0", "light0", "heavy1", "heavy2", "heavy3", "heavy4"]
    await asyncio.gather(*tasks)


async def test_pass_on_hands_the_slot_over_only_when_someone_waits():
    slots = FairSlots(1)
    await slots.acquire("a")
    await slots.pass_on("a")  # nobody waits: keep it, at once
    assert slots.busy == 1
    other = asyncio.create_task(slots.acquire("b"))
    await _settle()
    passing = asyncio.create_task(slots.pass_on("a"))
    await _settle()
    assert other.done() and not passing.done()  # b runs; a waits for the next slot
    slots.release()  # b's turn ends
    await _settle()
    assert passing.done() and slots.busy == 1


async def test_a_cancelled_waiter_leaves_the_queue_and_a_granted_one_passes_the_slot_on():
    slots = FairSlots(1)
    await slots.acquire("a")
    gone = asyncio.create_task(slots.acquire("b"))
    stays = asyncio.create_task(slots.acquire("c"))
    await _settle()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert slots.waiting == 1
    slots.release()
    await _settle()
    assert stays.done() and slots.busy == 1
    # Granted and cancelled in the same step: the slot is not lost.
    late = asyncio.create_task(slots.acquire("d"))
    await _settle()
    slots.release()  # grants d ...
    late.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await late
    assert slots.busy == 0


async def test_closing_fails_every_waiter_and_every_later_request_and_keeps_held_slots():
    slots = FairSlots(1)
    await slots.acquire("a")
    waiters = [asyncio.create_task(slots.acquire(user)) for user in ("a", "b", "b")]
    await _settle()
    slots.close()
    for waiter in waiters:
        with pytest.raises(SlotsClosed):
            await waiter
    assert slots.waiting == 0 and slots.busy == 1  # the running turn keeps its slot
    with pytest.raises(SlotsClosed):
        await slots.acquire("c")
    with pytest.raises(SlotsClosed):
        await slots.pass_on("a")  # between two turns: that turn was the last
    slots.release()
    assert slots.busy == 0


async def test_a_waiter_failed_by_close_and_then_cancelled_gives_back_no_slot():
    slots = FairSlots(1)
    await slots.acquire("a")
    waiter = asyncio.create_task(slots.acquire("b"))
    await _settle()
    slots.close()
    waiter.cancel()  # before it saw its SlotsClosed
    with pytest.raises((SlotsClosed, asyncio.CancelledError)):
        await waiter
    assert slots.busy == 1
