"""Matching answers to requests: sends by client_msg_id, the rest by order."""

from __future__ import annotations

import pytest

from switchboard.client.errors import Overloaded
from switchboard.client.matching import Matcher, Request
from switchboard.shared import protocol as p


def _send(cmid: str, size: int = 10) -> Request:
    return Request(p.Send(conversation_id="c", client_msg_id=cmid, text="hi"), "accepted", cmid=cmid, size=size)


def _error(code: str, cmid: str | None = None) -> p.Error:
    return p.Error(code=p.ErrorCode(code), message="no", client_msg_id=cmid)


def test_sends_are_matched_by_client_msg_id_in_any_order():
    matcher = Matcher()
    first, second = matcher.add_send(_send("m1")), matcher.add_send(_send("m2"))
    assert matcher.match(p.Accepted(client_msg_id="m2", id="1-0")) is second
    assert matcher.match(_error("busy", "m1")) is first
    assert matcher.match(p.Accepted(client_msg_id="m1", id="1-0")) is None  # already answered
    assert not matcher.sends


def test_a_send_registered_twice_shares_one_answer():
    matcher = Matcher()
    first = matcher.add_send(_send("m1"))
    assert matcher.add_send(_send("m1")) is first


def test_an_ordered_request_takes_the_next_answer_of_its_kind_or_the_next_error_of_no_send():
    matcher = Matcher()
    send = matcher.add_send(_send("m1"))
    history = Request(p.History(conversation_id="c"), "history")
    matcher.start(history)
    with pytest.raises(RuntimeError):
        matcher.start(Request(p.Conversations(), "conversations"))  # one at a time
    assert matcher.match(p.Pong()) is None  # not its kind
    assert matcher.match(_error("rate_limited", "m1")) is send  # a send's error is the send's
    assert matcher.match(_error("unknown_conversation")) is history
    assert matcher.current is None


def test_a_request_without_success_answer_is_closed_by_the_pong_of_its_ping():
    matcher = Matcher()
    rename = Request(p.Rename(conversation_id="c", title="t"), "pong", then_ping=True)
    matcher.start(rename)
    assert matcher.match(p.HistoryResult(conversation_id="c", messages=[])) is None
    assert matcher.match(p.Pong()) is rename
    cancel = Request(p.Cancel(conversation_id="c"), "pong", then_ping=True, resend_safe=False)
    matcher.start(cancel)
    assert matcher.match(_error("not_running")) is cancel  # the error came before the pong
    assert matcher.match(p.Pong()) is None  # that pong answers nothing now


def test_an_accepted_ordered_request_matches_its_own_client_msg_id():
    matcher = Matcher()
    regenerate = Request(p.Regenerate(conversation_id="c", client_msg_id="m0"), "accepted", cmid="m0")
    matcher.start(regenerate)
    assert matcher.match(p.Accepted(client_msg_id="other", id="1-0")) is None
    assert matcher.match(p.Accepted(client_msg_id="m0", id="1-0")) is regenerate


def test_an_unreadable_event_in_place_of_an_event_answers_only_a_history():
    matcher = Matcher()
    listing = Request(p.Conversations(), "conversations")
    matcher.start(listing)
    assert matcher.match(_error("unreadable", "m9")) is None
    assert matcher.match(p.ConversationsResult(conversations=[])) is listing
    history = Request(p.History(conversation_id="c"), "history")
    matcher.start(history)
    assert matcher.match(_error("unreadable")) is history


def test_after_a_drop_sends_and_safe_requests_go_again_and_unsafe_ones_fail():
    matcher = Matcher()
    first, second = matcher.add_send(_send("m1")), matcher.add_send(_send("m2"))
    history = Request(p.History(conversation_id="c"), "history")
    matcher.start(history)
    assert matcher.disconnected() == []
    assert matcher.pending() == [first, second, history]  # in the order they were made
    matcher.match(p.HistoryResult(conversation_id="c", messages=[]))
    cancel = Request(p.Cancel(conversation_id="c"), "pong", then_ping=True, resend_safe=False)
    matcher.start(cancel)
    assert matcher.disconnected() == [cancel]
    assert matcher.current is None and matcher.pending() == [first, second]


def test_pending_sends_are_bounded_in_count_and_bytes():
    matcher = Matcher(max_sends=2, max_bytes=100)
    matcher.add_send(_send("m1", 10))
    with pytest.raises(Overloaded):
        matcher.add_send(_send("big", 95))
    matcher.add_send(_send("m2", 10))
    with pytest.raises(Overloaded):
        matcher.add_send(_send("m3", 1))
    matcher.match(p.Accepted(client_msg_id="m1", id="1-0"))
    matcher.add_send(_send("m3", 80))  # room again, bytes included
