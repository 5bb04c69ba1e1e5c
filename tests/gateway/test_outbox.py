"""The connection outbox: bounded, in order, batched for the writer."""

import asyncio

from switchboard.gateway.outbox import Outbox


async def test_frames_come_out_in_order_in_batches_within_the_limits():
    box = Outbox(10)
    assert box.offer([b"a", b"bb", b"ccc"]) == 3
    await box.put(b"dddd")
    assert await box.take(max_frames=2, max_bytes=100) == [b"a", b"bb"]
    assert await box.take(max_frames=10, max_bytes=4) == [b"ccc"]  # the next would pass 4 bytes
    assert await box.take(max_frames=10, max_bytes=1) == [b"dddd"]  # a large frame goes alone
    assert len(box) == 0


async def test_offer_queues_what_fits_and_says_how_much():
    box = Outbox(3)
    assert box.offer([b"1", b"2"]) == 2
    assert box.offer([b"3", b"4"]) == 1  # only the leading frame fits
    assert box.offer([b"5"]) == 0 and len(box) == 3
    assert await box.take(8, 1024) == [b"1", b"2", b"3"]


async def test_wait_room_wakes_when_enough_frames_left():
    box = Outbox(4)
    box.offer([b"a", b"b", b"c", b"d"])
    waiting = asyncio.create_task(box.wait_room(2))
    await box.take(1, 1024)
    await asyncio.sleep(0.01)
    assert not waiting.done()  # one free slot is not two
    await box.take(1, 1024)
    await asyncio.wait_for(waiting, 1)


async def test_take_waits_for_a_frame_and_put_waits_for_room():
    box = Outbox(1)
    taking = asyncio.create_task(box.take(8, 1024))
    await asyncio.sleep(0.01)
    assert not taking.done()
    await box.put(b"x")
    assert await taking == [b"x"]
    await box.put(b"y")
    putting = asyncio.create_task(box.put(b"z"))
    await asyncio.sleep(0.01)
    assert not putting.done()  # full: the reply waits, it is not dropped
    assert await box.take(8, 1024) == [b"y"]
    await putting
    assert await box.take(8, 1024) == [b"z"]
