"""The delta rule: seq 0 starts, seq n appends, the final event replaces."""

from __future__ import annotations

from switchboard.client.replies import Replies
from switchboard.shared.protocol import Event


def _event(kind: str, text: str, seq: int | None = None, cmid: str = "m1", conv: str = "c") -> Event:
    return Event(id="1-0", conversation_id=conv, kind=kind, text=text, client_msg_id=cmid, seq=seq)


def test_deltas_append_and_the_final_event_completes_the_line():
    replies = Replies()
    first = replies.apply(_event("delta", "Turn", 0))
    second = replies.apply(_event("delta", " 1.", 1))
    final = replies.apply(_event("assistant", "Turn 1. Done"))
    assert (first.text, first.appended, first.restarted) == ("Turn", "Turn", False)
    assert (second.text, second.appended) == ("Turn 1.", " 1.")
    assert (final.text, final.appended, final.restarted, final.final) == ("Turn 1. Done", " Done", False, True)
    assert replies.text("c", "m1") is None  # forgotten once complete


def test_a_retried_attempt_starts_again_at_seq_zero():
    replies = Replies()
    replies.apply(_event("delta", "first try", 0))
    replies.apply(_event("delta", " goes on", 1))
    again = replies.apply(_event("delta", "Second", 0))
    assert (again.text, again.restarted) == ("Second", True)
    final = replies.apply(_event("assistant", "Something else entirely"))
    assert final.restarted and final.text == "Something else entirely"  # the final replaces what was shown


def test_reading_from_the_middle_of_a_reply_shows_what_arrived():
    replies = Replies()
    middle = replies.apply(_event("delta", " the rest", 4))
    assert (middle.text, middle.restarted) == (" the rest", False)
    final = replies.apply(_event("assistant", "All of it: the rest"))
    assert final.restarted  # not a continuation of what was shown: shown afresh


def test_replies_are_kept_apart_by_conversation_and_message():
    replies = Replies()
    replies.apply(_event("delta", "a", 0, cmid="m1"))
    replies.apply(_event("delta", "b", 0, cmid="m2"))
    replies.apply(_event("delta", "c", 0, cmid="m1", conv="other"))
    replies.apply(_event("delta", "a2", 1, cmid="m1"))
    assert [replies.text("c", "m1"), replies.text("c", "m2"), replies.text("other", "m1")] == ["aa2", "b", "c"]


def test_tool_events_number_the_reply_without_text_and_other_kinds_are_not_replies():
    replies = Replies()
    replies.apply(_event("delta", "Let me see", 0))
    tool = replies.apply(_event("tool_call", '[{"name": "clock"}]', 1))
    after = replies.apply(_event("delta", ". It is noon", 2))
    assert tool.text == "Let me see" and after.text == "Let me see. It is noon"
    assert replies.apply(_event("user", "hello")) is None
    assert replies.apply(_event("cancelled", "Let me see. It")).final


def test_the_open_replies_are_bounded():
    replies = Replies(max_open=3, max_chars=5)
    for n in range(5):
        replies.apply(_event("delta", "0123456789", 0, cmid=f"m{n}"))
    assert replies.text("c", "m0") is None and replies.text("c", "m1") is None  # the oldest forgotten
    assert replies.text("c", "m4") == "01234"  # cut at max_chars
