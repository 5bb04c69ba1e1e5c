"""What a connection does with each delivery (no Redis, no socket): every
branch of DeliveryState.on_batch, the monitor's question and attaching."""

from __future__ import annotations

import msgspec
import pytest

from switchboard.gateway.cursor import DeliveryEvents
from switchboard.gateway.delivery import (
    Deliver, DeliveryState, Ignore, Reattach, Resync, choose_fanout, resume_room)
from switchboard.shared.internal import Target
from switchboard.shared.protocol import Event
from switchboard.shared.settings import GatewaySettings

RESYNC_HOLDOFF = GatewaySettings().resync_holdoff

LONG_AGO = -100.0  #: an attach time well past the hold-off
NOW = 0.0


def batch(*numbers: int) -> DeliveryEvents:
    return DeliveryEvents([Event(id=f"{n}-0", conversation_id="c", kind="user", text=str(n)) for n in numbers])


def state(last: str, *, attached_at: float = LONG_AGO) -> DeliveryState:
    s = DeliveryState(last)
    s.last_attach = attached_at
    s.attached(("f1", "i1"))
    return s


def ids(events: DeliveryEvents, decision: Deliver) -> list[str]:
    frames = events.frames[decision.start:decision.start + decision.count]
    return [msgspec.json.decode(f)["id"] for f in frames]


# -- delivering ------------------------------------------------------------------


def test_a_batch_that_continues_the_cursor_is_delivered_whole():
    s, events = state("5-0"), batch(6, 7)
    decision = s.on_batch(Target("k", "5-0"), events, room=10, now=NOW)
    assert decision == Deliver(start=0, count=2, last="7-0", pause=False)
    assert ids(events, decision) == ["6-0", "7-0"]
    assert s.last == "7-0" and not s.paused


def test_an_overlapping_batch_delivers_only_what_is_new():
    s, events = state("7-0"), batch(6, 7, 8)
    decision = s.on_batch(Target("k", "5-0"), events, room=10, now=NOW)
    assert ids(events, decision) == ["8-0"] and s.last == "8-0"


def test_a_batch_with_nothing_new_is_ignored():
    s = state("9-0")
    assert isinstance(s.on_batch(Target("k", "5-0"), batch(6, 7), room=10, now=NOW), Ignore)
    assert s.last == "9-0"


def test_what_does_not_fit_pauses_the_connection_after_what_fits():
    s, events = state("0-0"), batch(1, 2, 3, 4)
    decision = s.on_batch(Target("k", "0-0"), events, room=3, now=NOW)
    assert decision == Deliver(start=0, count=3, last="3-0", pause=True)
    assert s.paused and s.last == "3-0"  # the cursor says what was queued, not what was sent
    # In flight before the detach: ignored, not a gap; the resume re-attaches from 3-0.
    assert s.on_batch(Target("k", "4-0"), batch(5), room=10, now=NOW) == Ignore("paused")
    assert s.on_batch(Target("k", "3-0", lost=True), batch(), room=10, now=NOW) == Ignore("paused")
    s.resumed()
    assert not s.paused
    assert s.on_batch(Target("k", "3-0"), events, room=10, now=NOW).count == 1  # 4-0


def test_a_full_outbox_pauses_without_taking_anything():
    s = state("0-0")
    assert s.on_batch(Target("k", "0-0"), batch(1), room=0, now=NOW) == Deliver(0, 0, "0-0", pause=True)
    assert s.paused and s.last == "0-0"


def test_a_closed_connection_takes_nothing():
    s = state("0-0")
    s.closed = True
    assert s.on_batch(Target("k", "0-0"), batch(1), room=10, now=NOW) == Ignore("closed")
    assert s.last == "0-0"


def test_a_malformed_batch_raises_and_changes_nothing():
    s = state("0-0")
    with pytest.raises(ValueError):
        s.on_batch(Target("k", "0-0"), batch(2, 1), room=10, now=NOW)
    with pytest.raises(ValueError):
        s.on_batch(Target("k", "not-an-id"), batch(1), room=10, now=NOW)
    assert s.last == "0-0" and not s.paused


# -- gaps ----------------------------------------------------------------------------


def test_a_gap_re_attaches_from_the_cursor():
    s = state("5-0")
    decision = s.on_batch(Target("k", "6-0"), batch(7), room=10, now=NOW)
    assert isinstance(decision, Reattach) and s.last == "5-0"  # nothing delivered past the hole


def test_a_gap_right_after_an_attach_waits_for_the_read_that_attach_asked_for():
    s = state("5-0", attached_at=NOW - RESYNC_HOLDOFF / 2)
    assert s.on_batch(Target("k", "6-0"), batch(7), room=10, now=NOW) == Ignore("gap right after an attach")
    later = NOW + RESYNC_HOLDOFF
    assert isinstance(s.on_batch(Target("k", "6-0"), batch(7), room=10, now=later), Reattach)


# -- lost targets (the fanout found events after ``prev`` trimmed, and dropped the attachment) --


def test_lost_at_the_cursor_resyncs():
    s = state("5-0")
    assert s.on_batch(Target("k", "5-0", lost=True), batch(), room=10, now=NOW) == Resync()


def test_lost_after_the_cursor_resyncs():
    # The connection lacks (5-0, 7-0], and the fanout found everything up to
    # its trim mark, which is past 7-0, gone: it cannot continue exactly. Left
    # alone it would wait forever, as the fanout sends nothing more for it.
    s = state("5-0")
    assert s.on_batch(Target("k", "7-0", lost=True), batch(), room=10, now=NOW) == Resync()


def test_lost_behind_the_cursor_re_attaches_even_right_after_an_attach():
    # An attach from 5-0 raced a batch up to 10-0 that the connection took; the
    # fanout then read from 5-0, found 5-0..8-0 trimmed and dropped the
    # attachment. The connection has 10-0, past the trim, so it may continue:
    # only a read from there can tell, and nothing else would ever ask for it.
    s = state("5-0", attached_at=NOW)
    assert isinstance(s.on_batch(Target("k", "5-0"), batch(6, 7, 8, 9, 10), room=10, now=NOW), Deliver)
    decision = s.on_batch(Target("k", "5-0", lost=True), batch(), room=10, now=NOW)
    assert isinstance(decision, Reattach) and s.last == "10-0"


# -- attaching --------------------------------------------------------------------------


def test_the_monitor_re_attaches_when_the_fanout_is_gone_restarted_or_was_never_reached():
    s = state("0-0")
    assert not s.needs_attach({"f1": "i1", "f2": "i2"})
    assert s.needs_attach({"f1": "i2"})  # a new incarnation starts with no attachments
    assert s.needs_attach({"f2": "i2"})  # its liveness key is gone
    s.attached(None)  # the attach reached no fanout
    assert s.needs_attach({"f1": "i1"})


def test_the_monitor_leaves_paused_and_closed_connections_alone():
    paused = state("0-0")
    paused.on_batch(Target("k", "0-0"), batch(1, 2), room=1, now=NOW)
    assert paused.paused and not paused.needs_attach({})
    closed = state("0-0")
    closed.closed = True
    assert not closed.needs_attach({})


def test_an_attach_goes_to_the_users_fanout_and_is_timed():
    s = DeliveryState("3-0")
    live = {"f1": "i1", "f2": "i2"}
    fanout = s.start_attach("alice", live, now=7.0)
    assert fanout == (choose_fanout("alice", live), live[choose_fanout("alice", live)])
    assert s.last_attach == 7.0
    s.attached(fanout)
    assert s.fanout == fanout and not s.needs_attach(live)


def test_no_attach_while_paused_or_without_a_live_fanout():
    s = state("0-0", attached_at=1.0)
    assert s.start_attach("alice", {}, now=2.0) is None
    assert s.fanout is None and s.last_attach == 2.0  # the monitor retries
    s.on_batch(Target("k", "0-0"), batch(1, 2), room=1, now=NOW)
    assert s.start_attach("alice", {"f1": "i1"}, now=3.0) is None  # its resume attaches it
    assert s.last_attach == 2.0


def test_a_paused_connection_resumes_at_half_its_outbox():
    assert resume_room(1024) == 512
    assert resume_room(1) == 1


def test_every_gateway_picks_the_same_fanout_for_a_user():
    live = {"f1": "i1", "f2": "i2", "f3": "i3"}
    picks = {choose_fanout(f"user-{i}", live) for i in range(100)}
    assert picks == {"f1", "f2", "f3"}
    assert choose_fanout("alice", live) == choose_fanout("alice", dict(reversed(list(live.items()))))
    assert choose_fanout("alice", {}) is None
    # Losing one fanout moves only that fanout's users.
    before = {f"user-{i}": choose_fanout(f"user-{i}", live) for i in range(100)}
    after = {u: choose_fanout(u, {"f1": "i1", "f2": "i2"}) for u in before}
    assert all(after[u] == before[u] for u in before if before[u] != "f3")


def test_what_fits_by_bytes_bounds_a_delivery_and_pauses():
    s = state("0-0")
    events = batch(1, 2, 3)
    seen: list[int] = []

    def fit(frames) -> int:  # noqa: ANN001 - as Outbox.fitting: room for two by bytes
        seen.append(len(frames))
        return 2

    assert s.on_batch(Target("k", "0-0"), events, room=fit, now=NOW) == Deliver(0, 2, "2-0", pause=True)
    assert seen == [3]  # asked about the fresh frames only


def test_the_resync_holdoff_is_per_connection():
    s = DeliveryState("5-0", resync_holdoff=10.0)
    s.last_attach = NOW - 5.0
    assert s.on_batch(Target("k", "6-0"), batch(7), room=10, now=NOW) == Ignore("gap right after an attach")
