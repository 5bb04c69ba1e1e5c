"""Properties of :class:`DeliveryState` over generated sequences of batches
(hypothesis, derandomized): whatever batches arrive -- overlapping, late,
early, lost, into a full outbox -- the events a connection queues are the
user's stream in order, each once, with no gap.

The model: the user's stream holds events ``1-0 .. N-0``; a batch for the
connection carries, as the fanout guarantees, every event in ``(prev, upto]``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.gateway.cursor import DeliveryEvents
from switchboard.gateway.delivery import Deliver, DeliveryState, Ignore, Reattach, Resync
from switchboard.shared.settings import GatewaySettings
from switchboard.shared.internal import Target
from switchboard.shared.protocol import Event

RESYNC_HOLDOFF = GatewaySettings().resync_holdoff  #: the default, as the gateway runs it

PROPS = settings(max_examples=300, derandomize=True, database=None, deadline=None)
N = 30  #: events in the modelled stream


def sid(n: int) -> str:
    return f"{n}-0"


def events(first: int, upto: int) -> DeliveryEvents:
    """Every event in ``(first, upto]``."""
    return DeliveryEvents([Event(id=sid(n), conversation_id="c", kind="user", text=str(n))
                           for n in range(first + 1, upto + 1)])


batches = st.builds(lambda prev, extra, lost, room, dt: ("batch", prev, min(N, prev + extra), lost, room, dt),
                    st.integers(0, N), st.integers(0, 12), st.integers(0, 9).map(lambda x: x == 0),
                    st.integers(0, 6), st.sampled_from([0.0, 0.01, RESYNC_HOLDOFF + 0.01]))
steps = st.lists(st.one_of(batches, batches, batches, st.just(("resume",)), st.just(("attach",))),
                 max_size=40)


@PROPS
@given(st.integers(0, N), steps)
def test_what_is_queued_is_the_stream_in_order_each_once_without_a_gap(start, script):
    s = DeliveryState(sid(start), resync_holdoff=RESYNC_HOLDOFF)
    s.attached(("f1", "i1"))
    now = 100.0
    queued: list[int] = []
    for step in script:
        if step[0] == "resume":
            s.resumed()
            continue
        if step[0] == "attach":
            s.start_attach("u", {"f1": "i1"}, now)
            continue
        _, prev, upto, lost, room, dt = step
        now += dt
        before = (s.last, s.paused)
        batch = events(prev, upto)
        decision = s.on_batch(Target("k", sid(prev), lost), batch, room=room, now=now)
        if isinstance(decision, Deliver):
            assert not before[1], "a paused connection was delivered to"
            assert decision.count <= room
            queued += [int(e.id.split("-")[0]) for e in batch.events[decision.start:decision.start + decision.count]]
            assert s.last == (sid(queued[-1]) if queued else sid(start))
            assert decision.pause == s.paused
        else:
            assert (s.last, s.paused) == before, f"{decision} changed the state"
        if isinstance(decision, Resync):
            assert lost and int(prev) >= int(before[0].split("-")[0])
            break  # the connection is closed
        if isinstance(decision, Reattach) and lost:
            assert prev < int(before[0].split("-")[0])
    assert queued == list(range(start + 1, start + 1 + len(queued)))


@PROPS
@given(st.integers(0, N), st.integers(0, N), st.integers(0, N), st.integers(1, 6))
def test_a_batch_that_reaches_the_cursor_delivers_what_fits_of_the_rest(start, prev, upto, room):
    upto = max(upto, prev)
    s = DeliveryState(sid(start), resync_holdoff=RESYNC_HOLDOFF)
    decision = s.on_batch(Target("k", sid(prev)), events(prev, upto), room=room, now=0.0)
    fresh = max(0, upto - max(start, prev))
    if prev > start:
        assert isinstance(decision, (Reattach, Ignore)) and s.last == sid(start)  # a gap: nothing delivered
    elif fresh == 0:
        assert isinstance(decision, Ignore)
    else:
        assert decision == Deliver(start - prev if start > prev else 0, min(fresh, room),
                                   sid(start + min(fresh, room)), fresh > room)


@PROPS
@given(st.integers(0, N), st.lists(st.integers(1, N), min_size=2, max_size=8))
def test_a_batch_out_of_stream_order_is_refused_and_changes_nothing(start, numbers):
    if all(a < b for a, b in zip(numbers, numbers[1:])):
        numbers = numbers[::-1] if len(set(numbers)) > 1 else numbers + numbers[:1]
    s = DeliveryState(sid(start), resync_holdoff=RESYNC_HOLDOFF)
    bad = DeliveryEvents([Event(id=sid(n), conversation_id="c", kind="user", text="x") for n in numbers])
    with pytest.raises(ValueError):
        s.on_batch(Target("k", sid(0)), bad, room=10, now=0.0)
    assert (s.last, s.paused) == (sid(start), False)
