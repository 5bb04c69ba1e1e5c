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


async def test_offer_stops_at_the_byte_bound_but_an_empty_outbox_takes_one_frame_of_any_size():
    box = Outbox(100, max_bytes=10)
    assert box.offer([b"x" * 25, b"y"]) == 1  # larger than the bound, but alone in an empty outbox
    assert box.bytes == 25 and box.offer([b"z"]) == 0  # nothing more while it is over
    assert await box.take(8, 1024) == [b"x" * 25] and box.bytes == 0
    assert box.offer([b"aaaa", b"bbbb", b"cc", b"d"]) == 3  # 4 + 4 + 2 = 10; one more byte would pass
    assert box.fitting([b"e"]) == 0 and box.bytes == 10
    await box.take(1, 1024)
    assert box.fitting([b"eeee", b"f"]) == 1


async def test_put_waits_for_room_in_bytes():
    box = Outbox(100, max_bytes=10)
    box.offer([b"12345678"])
    putting = asyncio.create_task(box.put(b"abc"))  # 8 + 3 > 10
    await asyncio.sleep(0.01)
    assert not putting.done()  # the reply waits for bytes, though 99 slots are free
    assert await box.take(8, 1024) == [b"12345678"]
    await asyncio.wait_for(putting, 1)
    assert box.bytes == 3


async def test_wait_room_waits_for_free_bytes_too():
    box = Outbox(100, max_bytes=10)
    box.offer([b"aaaa", b"bbbb", b"cc"])
    waiting = asyncio.create_task(box.wait_room(1, free_bytes=5))
    await box.take(1, 1024)  # 4 bytes free: not yet
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await box.take(1, 1024)
    await asyncio.wait_for(waiting, 1)
