"""The delivery hub against a real Redis and real pub/sub, with a stand-in
fanout (a subscription to its control channel): a batch larger than the
outbox is taken in part and the rest is held back in Redis, never dropped;
a connection its fanout dropped is re-attached or resynced, never left
waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest
import redis.asyncio as aioredis

from switchboard.gateway import hub as hub_module
from switchboard.gateway.hub import Connection, DeliveryHub
from switchboard.shared import internal, keys
from switchboard.shared.logs import JsonFormatter
from switchboard.shared.protocol import CloseCode, Event

FANOUT = "f-test"


def events(first: int, count: int) -> list[Event]:
    return [Event(id=f"{i}-0", conversation_id="c", kind="user", text=str(i)) for i in range(first, first + count)]


@pytest.fixture
async def setup(clean_redis):
    raw = aioredis.Redis.from_url(clean_redis)
    await raw.sadd(keys.fanout_members(), FANOUT)
    await raw.set(keys.fanout_alive(FANOUT), "incarnation-1")
    control = raw.pubsub()
    await control.subscribe(keys.fanout_control(FANOUT))
    await control.get_message(timeout=1)  # the subscribe confirmation
    hub = DeliveryHub(raw, "gw-test")
    running = asyncio.create_task(hub.run())
    await asyncio.wait_for(hub.ready.wait(), 5)
    await asyncio.sleep(0.1)  # past the monitor's first pass, which could attach a new connection twice

    async def next_control() -> internal.Attach | internal.Detach:
        message = await control.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None, "no control message"
        return internal.decode_control(message["data"])

    async def deliver(conn: str, prev: str, batch: list[Event], *, lost: bool = False) -> None:
        delivery = internal.Delivery(targets=[internal.Target(conn=conn, prev=prev, lost=lost)], events=batch)
        assert await raw.publish(hub.channel, internal.encode(delivery)) == 1

    yield hub, next_control, deliver
    hub.closing.set()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await control.aclose()
    await raw.aclose()


async def _until(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def test_a_batch_larger_than_the_outbox_pauses_and_resumes_from_the_cursor(setup):
    hub, next_control, deliver = setup
    closes: list[CloseCode] = []
    conn = Connection("c1", "u1", "d", "E", "0-0", 16, close=lambda code, why: closes.append(code))
    await hub.add(conn)
    assert await next_control() == internal.Attach(gateway="gw-test", conn="c1", user="u1", cursor="0-0")

    await deliver("c1", "0-0", events(1, 40))
    await _until(lambda: conn.paused)
    assert len(conn.outbox) == 16 and conn.last == "16-0"  # what fit, in order
    assert await next_control() == internal.Detach(conn="c1", user="u1")
    await deliver("c1", "40-0", events(41, 5))  # in flight before the detach: ignored, not a gap
    await asyncio.sleep(0.1)
    assert len(conn.outbox) == 16 and conn.last == "16-0"

    frames = await conn.outbox.take(8, 1 << 20)  # the writer makes room
    assert [f for f in frames if b'"id":"1-0"' in f]
    assert await next_control() == internal.Attach(gateway="gw-test", conn="c1", user="u1", cursor="16-0")
    assert not conn.paused
    await deliver("c1", "16-0", events(17, 4))
    await _until(lambda: conn.last == "20-0")
    assert closes == []


async def test_a_batch_larger_than_the_outbox_in_bytes_pauses_and_resumes_when_half_is_free(setup):
    """Ten events of 1 kB against a 4 kB outbox with room for 1024 frames:
    the byte bound pauses delivery as the frame bound does."""
    hub, next_control, deliver = setup
    conn = Connection("c3", "u3", "d", "E", "0-0", 1024, close=lambda code, why: None, outbox_bytes=4096)
    await hub.add(conn)
    await next_control()
    big = [Event(id=f"{i}-0", conversation_id="c", kind="user", text="x" * 1000) for i in range(1, 11)]
    await deliver("c3", "0-0", big)
    await _until(lambda: conn.paused)
    assert len(conn.outbox) == 3 and conn.outbox.bytes <= 4096 and conn.last == "3-0"
    assert await next_control() == internal.Detach(conn="c3", user="u3")
    await conn.outbox.take(1, 1 << 20)  # ~1.1 kB free of 4 kB: less than half, still paused
    await asyncio.sleep(0.1)
    assert conn.paused
    await conn.outbox.take(1, 1 << 20)
    assert await next_control() == internal.Attach(gateway="gw-test", conn="c3", user="u3", cursor="3-0")
    await hub.remove(conn)


async def test_a_connection_whose_outbox_stays_full_is_closed_as_slow(setup):
    hub, next_control, deliver = setup
    closes: list[CloseCode] = []
    conn = Connection("c2", "u2", "d", "E", "0-0", 16, close=lambda code, why: closes.append(code),
                      slow_consumer_after=0.2)
    await hub.add(conn)
    await next_control()
    await deliver("c2", "0-0", events(1, 20))
    await _until(lambda: closes == [CloseCode.SLOW_CONSUMER])
    assert conn.closed and conn.last == "16-0"
    await hub.remove(conn)


async def test_a_connection_its_fanout_dropped_behind_its_cursor_is_attached_again(setup):
    hub, next_control, deliver = setup
    closes: list[CloseCode] = []
    conn = Connection("c3", "u3", "d", "E", "0-0", 16, close=lambda code, why: closes.append(code))
    await hub.add(conn)
    await next_control()
    await deliver("c3", "0-0", events(1, 5))
    await _until(lambda: conn.last == "5-0")
    # The fanout read from an older cursor, found it trimmed and dropped the
    # attachment; the connection, at 5-0, is asked for again from there.
    await deliver("c3", "0-0", [], lost=True)
    assert await next_control() == internal.Attach(gateway="gw-test", conn="c3", user="u3", cursor="5-0")
    await deliver("c3", "5-0", events(6, 1))
    await _until(lambda: conn.last == "6-0")
    assert closes == []


async def test_a_connection_missing_trimmed_events_is_resynced(setup):
    hub, next_control, deliver = setup
    closes: list[CloseCode] = []
    conn = Connection("c4", "u4", "d", "E", "2-0", 16, close=lambda code, why: closes.append(code))
    await hub.add(conn)
    await next_control()
    await deliver("c4", "4-0", [], lost=True)  # (2-0, 4-0] never arrived, and the rest is trimmed
    await _until(lambda: closes == [CloseCode.RESYNC])
    assert conn.closed
    await hub.remove(conn)


def test_log_lines_about_a_connection_name_its_user_device_and_id(caplog):
    conn = Connection("c5", "u5", "phone", "E", "0-0", 16, close=lambda code, why: None)
    with caplog.at_level(logging.WARNING, logger=hub_module.__name__):
        conn.close(CloseCode.SLOW_CONSUMER, "outbox full")
    (record,) = caplog.records
    line = json.loads(JsonFormatter().format(record))
    assert (line["user"], line["device"], line["conn"]) == ("u5", "phone", "c5")
