"""The resume rule (:func:`resume.resolve`) stated as properties and checked on
generated stream states and client positions (hypothesis, derandomized).

A stream state is what ``stream_state.lua`` returns: ``trimmed <= window_start
<= last_id`` (``last_id`` is ``trimmed`` when everything was trimmed). A
client position is any valid stream id: the decoder lets any through.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.gateway.resume import Resume, StreamState, parse_offset, resolve
from switchboard.shared import streamids
from switchboard.shared.streamids import ZERO

PROPS = settings(max_examples=200, derandomize=True, database=None, deadline=None)

# Small parts make positions collide with the state's ids often (the edges
# are where resume rules go wrong); large ones check the ordering is numeric.
parts = st.integers(0, 4) | st.integers(0, 10**20 - 1)
ids = st.builds(lambda ms, seq: f"{ms}-{seq}", parts, parts)
epochs = st.sampled_from(["E", "OLD", ""]) | st.text(max_size=8)


def key(stream_id: str) -> tuple[int, int]:
    return streamids.parse(stream_id)


@st.composite
def states(draw) -> StreamState:
    trimmed, window_start, last_id = sorted(draw(st.lists(ids | st.just(ZERO), min_size=3, max_size=3)), key=key)
    return StreamState(epoch=draw(epochs), trimmed=trimmed, last_id=last_id, window_start=window_start)


@st.composite
def hellos(draw) -> tuple[StreamState, dict]:
    """A state and the arguments of one ``hello`` on it: a position in this
    life, in another life, or none; a stored offset or none."""
    state = draw(states())
    # Positions at the state's own ids, between them, before and after them.
    position = st.sampled_from([state.trimmed, state.window_start, state.last_id]) | ids
    last_id = draw(st.none() | position)
    epoch = draw(st.none() | st.just(state.epoch) | epochs)
    stored = draw(st.none() | st.tuples(st.just(state.epoch) | epochs, position))
    return state, {"last_id": last_id, "epoch": epoch, "stored": stored}


def position_of(state: StreamState, hello: dict) -> str | None:
    """The position in this life the hello names, if any (the one resolve must honour)."""
    if hello["last_id"] is not None:
        return hello["last_id"] if hello["epoch"] == state.epoch else None
    if hello["stored"] is not None and hello["stored"][0] == state.epoch:
        return hello["stored"][1]
    return None


def not_after(a: str, b: str) -> bool:
    return not streamids.later(a, b)


def rule_resume_from_is_a_retained_position_of_this_life(case) -> None:
    """Never after the stream's newest id, never before what retention kept."""
    state, hello = case
    r = resolve(state, **hello)
    assert streamids.is_valid(r.resume_from)
    assert not_after(r.resume_from, state.last_id)
    assert not_after(state.trimmed, r.resume_from)


def rule_recovered_means_exactly_from_the_clients_position(case) -> None:
    """``recovered`` only when the client named a position in this life (or is
    new to a stream never trimmed, replayed from its start), and then the
    replay starts exactly there: nothing skipped, nothing it already has."""
    state, hello = case
    r = resolve(state, **hello)
    if not r.recovered:
        return
    position = position_of(state, hello)
    if position is None:
        assert hello["last_id"] is None and r.source == "new"
        assert r.resume_from == ZERO and state.trimmed == ZERO
    else:
        assert r.resume_from == position
        assert not_after(state.trimmed, position) and not_after(position, state.last_id)


def rule_a_position_before_the_trim_mark_is_not_recovered(case) -> None:
    state, hello = case
    position = position_of(state, hello)
    r = resolve(state, **hello)
    if position is not None and streamids.later(state.trimmed, position):
        assert (r.resume_from, r.recovered) == (state.trimmed, False)


def rule_a_position_from_the_future_continues_from_the_present(case) -> None:
    state, hello = case
    position = position_of(state, hello)
    r = resolve(state, **hello)
    if position is not None and streamids.later(position, state.last_id):
        assert (r.resume_from, r.recovered) == (state.last_id, False)


def rule_a_position_of_another_life_is_never_recovered(case) -> None:
    """A ``last_id`` with a different (or no) epoch, or a stored offset of an
    earlier life, says nothing about this stream: the device is treated as new."""
    state, hello = case
    r = resolve(state, **hello)
    if hello["last_id"] is not None and hello["epoch"] != state.epoch:
        assert (r.resume_from, r.recovered, r.source) == (state.window_start, False, "last_id")
    if hello["last_id"] is None and hello["stored"] is not None and hello["stored"][0] != state.epoch:
        assert (r.resume_from, r.recovered, r.source) == (state.window_start, False, "offset")


def rule_last_id_wins_over_the_stored_offset(case) -> None:
    state, hello = case
    if hello["last_id"] is not None:
        assert resolve(state, **hello) == resolve(state, **{**hello, "stored": None})


def rule_reconnecting_from_the_answer_resumes_there_exactly(case) -> None:
    """A device that got ``welcome`` and then nothing, reconnecting with
    ``resume_from`` and the epoch, continues exactly where it was told it stands."""
    state, hello = case
    first = resolve(state, **hello)
    again = resolve(state, last_id=first.resume_from, epoch=state.epoch, stored=None)
    assert again == Resume(first.resume_from, True, "last_id")


RULES = [
    rule_resume_from_is_a_retained_position_of_this_life,
    rule_recovered_means_exactly_from_the_clients_position,
    rule_a_position_before_the_trim_mark_is_not_recovered,
    rule_a_position_from_the_future_continues_from_the_present,
    rule_a_position_of_another_life_is_never_recovered,
    rule_last_id_wins_over_the_stored_offset,
    rule_reconnecting_from_the_answer_resumes_there_exactly,
]


@settings(PROPS, max_examples=600)
@given(hellos())
def test_every_hello_follows_every_rule(case):
    """Each rule above, on each generated hello (one run for all: generating
    the cases is what costs time). A failure names the rule."""
    for rule in RULES:
        rule(case)


@PROPS
@given(states())
def test_a_new_device_is_recovered_only_if_the_replay_is_the_whole_life(state):
    r = resolve(state, last_id=None, epoch=None, stored=None)
    assert r.resume_from == state.window_start and r.source == "new"
    assert r.recovered == (state.window_start == ZERO and state.trimmed == ZERO)


@PROPS
@given(st.text(max_size=20).filter(lambda e: "|" not in e), ids)
def test_stored_offsets_round_trip(epoch, entry):
    assert parse_offset(f"{epoch}|{entry}") == (epoch, entry)


@PROPS
@given(st.none() | st.text(max_size=60) | st.builds(lambda e, i, junk: f"{e}|{i}{junk}", epochs, ids,
                                                    st.sampled_from(["\n", " ", "-1", "x", "|"])))
def test_parse_offset_returns_none_or_a_valid_id(raw):
    parsed = parse_offset(raw)
    assert parsed is None or streamids.is_valid(parsed[1])
