import msgspec
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from switchboard.gateway.cursor import DeliveryEvents
from switchboard.gateway.history import to_history
from switchboard.shared.protocol import Event


def accept(last: str, prev: str, *ids: str) -> tuple[list[str], bool]:
    """``(ids delivered, gap)`` for a connection at ``last`` given a batch."""
    batch = DeliveryEvents([Event(id=i, conversation_id="c", kind="user", text=i) for i in ids])
    start = batch.first_fresh(last, prev)
    return ([], True) if start is None else (batch.ids[start:], False)


def test_a_contiguous_batch_is_taken_whole():
    assert accept("5-0", "5-0", "6-0", "7-0") == (["6-0", "7-0"], False)


def test_an_overlapping_batch_delivers_only_what_is_new():
    assert accept("7-0", "5-0", "6-0", "7-0", "8-0") == (["8-0"], False)
    assert accept("9-0", "5-0", "6-0", "7-0") == ([], False)


def test_a_batch_starting_after_the_cursor_is_a_gap():
    assert accept("5-0", "6-0", "7-0") == ([], True)


def test_history_keeps_user_and_assistant_text_newest_last():
    messages = [SystemMessage("sys"), HumanMessage("q1"), AIMessage("a1"),
                ToolMessage("tool", tool_call_id="t"), HumanMessage("q2"),
                AIMessage([{"type": "text", "text": "a2"}])]
    out = to_history(messages, 10)
    assert [(m.role, m.text) for m in out] == [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    assert [m.text for m in to_history(messages, 2)] == ["q2", "a2"]


def test_a_shared_batch_serves_each_connection_from_its_own_position():
    events = [Event(id=f"{i}-0", conversation_id="c", kind="user", text=str(i)) for i in (4, 5, 6)]
    shared = DeliveryEvents(events)
    assert shared.first_fresh("3-0", "3-0") == 0
    assert shared.first_fresh("5-0", "5-0") == 2
    assert shared.first_fresh("6-0", "4-0") == 3  # has everything already
    assert shared.first_fresh("3-0", "4-0") is None  # 4-0 would be missing: a gap
    assert [msgspec.json.decode(f)["id"] for f in shared.frames] == ["4-0", "5-0", "6-0"]


def test_a_batch_out_of_stream_order_is_refused():
    events = [Event(id=i, conversation_id="c", kind="user", text="x") for i in ("5-0", "4-0")]
    with pytest.raises(ValueError):
        DeliveryEvents(events).first_fresh("0-0", "0-0")
    with pytest.raises(ValueError):
        DeliveryEvents(events[:1] * 2).first_fresh("0-0", "0-0")  # a repeated id, too
    with pytest.raises(ValueError):
        DeliveryEvents(events).first_fresh("0-0", "9-0")  # even where it would be a gap
