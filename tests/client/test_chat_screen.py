"""What ``switchboard chat`` prints for events (the terminal's side, without a terminal)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from switchboard.client.chat import Screen, default_state_path
from switchboard.client.stream import Gap
from switchboard.shared.protocol import Event


def _screen() -> tuple[Screen, io.StringIO]:
    out = io.StringIO()
    return Screen(out, io.StringIO(), "laptop", "trip", json_lines=False), out


def _event(kind: str, text: str, seq: int | None = None, conv: str = "trip", **fields) -> Event:
    return Event(id="1-0", conversation_id=conv, kind=kind, text=text, client_msg_id="m1", seq=seq, **fields)


def test_a_streamed_reply_is_written_in_place_on_one_line():
    screen, out = _screen()
    screen.show(_event("user", "hello", device_id="laptop"))
    screen.show(_event("delta", "Hi", 0))
    screen.show(_event("delta", " there", 1))
    screen.show(_event("assistant", "Hi there"))
    screen.show(_event("user", "and you?", device_id="phone"))
    assert out.getvalue() == "you: hello\nassistant: Hi there\nyou@phone: and you?\n"


def test_a_final_text_that_differs_from_the_stream_is_shown_whole():
    screen, out = _screen()
    screen.show(_event("delta", "Hi", 0))
    screen.show(_event("assistant", "Hello, in full"))
    assert out.getvalue() == "assistant: Hi\nassistant: Hello, in full\n"


def test_other_conversations_get_one_line_and_their_deltas_none():
    screen, out = _screen()
    screen.show(_event("delta", "not shown", 0, conv="work"))
    screen.show(_event("assistant", "a long reply " * 20, conv="work"))
    line, = out.getvalue().splitlines()
    assert line.startswith("[work] assistant: a long reply") and len(line) < 90


def test_a_question_is_remembered_for_answer_and_a_gap_is_said():
    screen, out = _screen()
    screen.show(_event("interrupt", json.dumps({"id": "q1", "value": {"question": "go on?"}})))
    assert screen.questions == {"trip": ("m1", "q1")}
    screen.show(Gap("e", "1-0"))
    assert "question: {\"question\": \"go on?\"}" in out.getvalue() and "may be missing" in out.getvalue()
    screen.show(_event("resumed", '"yes"'))
    assert screen.questions == {}


def test_json_lines_print_each_event_whole():
    out = io.StringIO()
    screen = Screen(out, io.StringIO(), "laptop", "trip", json_lines=True)
    screen.show(_event("delta", "Hi", 0))
    assert json.loads(out.getvalue())["kind"] == "delta"


def test_the_state_file_lives_under_xdg_state_home():
    assert default_state_path("/s", "/home/u", "ann") == Path("/s/switchboard/chat-ann.json")
    assert default_state_path(None, "/home/u", "ann") == Path("/home/u/.local/state/switchboard/chat-ann.json")
