"""The live fuzzer: thousands of hostile inputs to a running gateway (real
processes, a real Redis, real sockets), before and after ``hello``, while a
second user pings. Each input must get its documented answer; the gateway
must not crash, hang, log a traceback, or slow the other user down.

The inputs come from tests/fuzz/generators.py with a fixed seed; ``make fuzz``
runs the same generators for longer (tests/fuzz/run.py)."""

from __future__ import annotations

import pytest

from switchboard.shared import protocol as p
from tests.fuzz import generators as g
from tests.fuzz.generators import Case, Expect, Wire
from tests.fuzz.run import MAX_MESSAGE_SIZE, log_problems, plan, session, start_services
from tests.fuzz.runner import Answers, judge
from tests.fuzz.wire import FuzzClient
from tests.support.client import Device, new_user
from tests.support.cluster import token

SEED = 10
#: About 3,000 inputs: 250 per category after hello (50 of the large or
#: closing ones), 40 per category before hello.
PLAN = plan(after=250, before=40, heavy=50)


async def test_hostile_input_gets_its_answer_and_nobody_else_notices(cluster):
    gateway = start_services(cluster)
    result = await session(gateway, [(SEED, PLAN)])
    print(result.tally.table())
    assert result.tally.total == PLAN.total - PLAN.after["bad_hello"]  # bad_hello is a first frame only
    assert result.tally.failed == 0, result.tally.table()
    assert result.alive, "the gateway exited"
    assert result.log_problems == []
    assert result.reply_after is not None and result.reply_after["kind"] == "assistant"
    result.bystander.check()


# -- found by the fuzzer and the decoder's properties ------------------------------


async def _answers(client: FuzzClient, frame: dict, *, marker: str | None = "after") -> Answers:
    await client.send_json(frame)
    if marker is not None:
        await client.send_json({"type": "send", "client_msg_id": marker})
    return await client.answers(marker=marker, timeout=8.0)


async def test_ids_ending_in_a_newline_are_bad_frames_not_internal_errors(cluster):
    """``{"type": "ack", "id": "1-1\\n"}`` passed the stream id pattern (``$``
    matches before a final newline) and failed in the handler: an ``internal``
    error and a traceback. The same ``last_id`` in a hello with the stream's
    epoch crashed the connection handler (1011)."""
    gateway = start_services(cluster)
    user = new_user()
    phone = Device(gateway.url, token(user), "phone")
    epoch = (await phone.connect())["epoch"]
    await phone.close()

    client = FuzzClient(gateway.url)
    await client.open()
    assert (await client.hello(token(user), "tablet", timeout=10))["type"] == "welcome"
    answered = await _answers(client, {"type": "ack", "id": "1-1\n"})
    assert [f.get("code") for f in answered.frames] == ["bad_frame"] and not answered.closed
    client.close()

    client = FuzzClient(gateway.url)
    await client.open()
    answered = await _answers(client, {"type": "hello", "token": token(user), "device_id": "tablet",
                                       "last_id": "1-2\n", "epoch": epoch}, marker=None)
    assert ([f.get("code") for f in answered.frames], answered.close_code) == (["bad_frame"], 4002)
    client.close()
    assert log_problems(gateway.log_text()) == []


async def test_deep_nesting_is_a_bad_frame_before_and_after_hello(cluster):
    """Nesting past the recursion limit raised RecursionError out of the
    decoder: the connection handler failed (1011) instead of answering.
    Before hello a message may be HELLO_MAX_SIZE (16 KiB) at most: 8,000
    levels fit in it; after hello, 100,000."""
    gateway = start_services(cluster)
    for phase in ("before", "after"):
        depth = 8_000 if phase == "before" else 100_000
        data = "[" * depth + "]" * depth
        client = FuzzClient(gateway.url)
        await client.open()
        if phase == "after":
            assert (await client.hello(token(new_user()), "d", timeout=10))["type"] == "welcome"
        await client.send([g.text(data)])
        if phase == "after":
            await client.send_json({"type": "send", "client_msg_id": "after"})
        answered = await client.answers(marker="after" if phase == "after" else None, timeout=8.0)
        assert [f.get("code") for f in answered.frames] == ["bad_frame"], phase
        assert answered.close_code == (4002 if phase == "before" else None), phase
        client.close()
    assert log_problems(gateway.log_text()) == []


# -- the fuzzer's own parts (no services) -------------------------------------------


def test_the_same_seed_gives_the_same_inputs():
    small = plan(after=20, before=5)
    first = list(g.cases(3, small, MAX_MESSAGE_SIZE, "a.b.c"))
    assert first == list(g.cases(3, small, MAX_MESSAGE_SIZE, "a.b.c"))
    assert first != list(g.cases(4, small, MAX_MESSAGE_SIZE, "a.b.c"))


def test_the_expected_answers_agree_with_the_decoder():
    """For single, complete text frames after hello, what a case expects is
    what ``decode_client_frame`` says (or, for a valid frame, the documented
    answer to it): the expectations are certain, not guesses."""
    tok = token("someone")
    checked = 0
    for case in g.cases(SEED, PLAN, MAX_MESSAGE_SIZE, tok):
        [*frames] = case.frames
        if (case.phase != "after" or len(frames) != 1 or frames[0].opcode != g.TEXT or frames[0].declared
                or frames[0].rsv):
            continue
        try:
            data = frames[0].data.decode()
        except UnicodeDecodeError:
            continue
        try:
            frame = p.decode_client_frame(data, MAX_MESSAGE_SIZE)
        except p.FrameError as exc:
            assert exc.code.value in case.expect.errors, (case.category, case.note, exc.code)
        else:
            assert g.VALID_ANSWERS[type(frame).__name__.lower()] == case.expect, (case.category, case.note)
        checked += 1
    assert checked > 1500


def _case(expect: Expect, phase: str = "after") -> Case:
    return Case("test", phase, (Wire(g.TEXT, b"{}"),), expect)


@pytest.mark.parametrize("answers, problem", [
    (Answers(), "silence"),
    (Answers(timed_out=True), "no answer"),
    (Answers(frames=[{"type": "error", "code": "internal"}]), "internal"),
    (Answers(frames=[{"type": "error", "code": "unknown_conversation"}]), "expected"),
    (Answers(frames=[{"type": "error", "code": "bad_frame"}] * 2), "2 answers"),
    (Answers(closed=True, close_code=1011), "closed with 1011"),
    (Answers(closed=True, close_code=None), "without a close frame"),
    (Answers(frames=[{"type": "pong"}]), "expected"),
])
def test_the_judge_refuses_wrong_answers(answers, problem):
    verdict = judge(_case(Expect(errors=frozenset({"bad_frame"}))), answers)
    assert verdict is not None and problem in verdict
    assert judge(_case(Expect(errors=frozenset({"bad_frame"}))),
                 Answers(frames=[{"type": "error", "code": "bad_frame"}])) is None


def test_the_judge_wants_an_error_before_a_4xxx_close():
    before = _case(Expect(errors=frozenset({"hello_required"}), closes=frozenset({4002})), phase="before")
    assert judge(before, Answers(closed=True, close_code=4002)) is not None
    assert judge(before, Answers(frames=[{"type": "welcome"}], closed=True, close_code=4002)) is not None
    assert judge(before, Answers(frames=[{"type": "error", "code": "hello_required"}])) is not None  # still open
    assert judge(before, Answers(frames=[{"type": "error", "code": "hello_required"}],
                                 closed=True, close_code=4002)) is None
