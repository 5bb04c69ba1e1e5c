"""The checker must catch each kind of violation (a check that cannot fail
proves nothing), and pass a clean run."""

from tests.chaos.checker import (
    DeviceLog, Report, Segment, check_accept_ids, check_dead_letters, check_deltas, check_delays, check_device,
    check_history, check_inbound_ids, check_memory, check_questions, check_replies, group_accepts, replaced_by_edits,
)


def entry(i: int, kind: str = "user", cmid: str = "m", text: str | None = None) -> tuple[str, dict]:
    return f"{i}-0", {"conv": "c", "kind": kind, "cmid": cmid, "text": text or f"t{i}"}


STREAM = [entry(1, cmid="a"), entry(2, "assistant", "a"), entry(3, cmid="b"), entry(4, "assistant", "b")]


def event(i: int) -> dict:
    entry_id, fields = STREAM[i - 1]
    return {"id": entry_id, "conversation_id": "c", "kind": fields["kind"], "client_msg_id": fields["cmid"],
            "text": fields["text"]}


def run(*segments: Segment, must_reach_end: bool = True) -> Report:
    report = Report()
    check_device(DeviceLog("u", "d", list(segments)), STREAM, report, must_reach_end=must_reach_end)
    return report


def test_a_clean_log_with_reconnects_passes():
    report = run(Segment("new", None, "0-0", True, events=[event(1), event(2)]),
                 Segment("last_id", "2-0", "2-0", True, events=[event(3)]),
                 Segment("stale", "2-0", "2-0", True, events=[event(3), event(4)]))
    assert report.ok, report.examples


def test_gap_duplicate_reorder_foreign_and_incomplete_are_caught():
    assert run(Segment("new", None, "0-0", True, events=[event(1), event(3)])).violations["gap"] == 1
    assert run(Segment("new", None, "0-0", True, events=[event(1), event(1), event(2)])).violations["duplicate"] == 1
    assert run(Segment("new", None, "0-0", True, events=[event(2), event(1)])).violations["reorder"] == 1
    other_user = dict(event(2), text="someone else's text")
    assert run(Segment("new", None, "0-0", True, events=[event(1), other_user])).violations["foreign_event"] == 1
    assert run(Segment("new", None, "0-0", True, events=[event(1), event(2)])).violations["incomplete"] == 1


def test_a_resume_that_does_not_honour_last_id_is_caught():
    report = run(Segment("last_id", "2-0", "1-0", True, events=[event(2), event(3), event(4)]))
    assert report.violations["resume"] == 1
    report = run(Segment("last_id", "2-0", "2-0", False, events=[event(3), event(4)]))
    assert report.violations["resume"] == 1
    report = run(Segment("offset", None, "1-0", True, acked_before=["1-0", "3-0"], confirmed_ack="3-0",
                         events=[event(2), event(3), event(4)]))
    assert report.violations["resume"] == 1  # behind a confirmed ack


def test_missing_and_double_replies_are_caught():
    report = Report()
    check_replies(STREAM + [entry(5, "assistant", "b")], {"a": "x", "b": "y", "c": "z"}, "u", report)
    assert report.violations["reply_count"] == 2  # b twice, c never
    assert report.violations["user_event_count"] == 1  # c has no user event


def test_a_turn_error_is_not_a_valid_reply_and_a_dead_letter_fails_the_run():
    good = Report()
    check_replies(STREAM, {"a": "1-0", "b": "3-0"}, "u", good)
    check_dead_letters([], good)
    assert good.ok, good.examples
    errored = STREAM[:3] + [entry(4, "turn_error", "b", "the assistant failed on this message")]
    report = Report()
    check_replies(errored, {"a": "1-0", "b": "3-0"}, "u", report)
    assert report.violations == {"turn_error": 1}
    report = Report()
    check_dead_letters([("9-0", {"user": "u", "conv": "c", "entry": "3-0", "attempts": "20", "reason": "x"})],
                       report)
    assert report.violations == {"dead_letter": 1}


def with_in(stream: list, ids: dict[str, str]) -> list:
    return [(entry_id, dict(fields, **{"in": ids[fields["cmid"]]})) for entry_id, fields in stream]


def test_every_event_of_a_message_names_the_inbound_id_it_was_accepted_as():
    accepted = {"a": "1-0", "b": "3-0"}
    stream = with_in(STREAM + [delta(5, 0, "t4", cmid="b")], accepted)
    report = Report()
    check_inbound_ids(stream, accepted, "u", report)
    assert report.ok, report.examples
    wrong = with_in(STREAM, {"a": "1-0", "b": "1-0"})  # b's events name a's inbound entry
    report = Report()
    check_inbound_ids(wrong, accepted, "u", report)
    assert report.violations == {"inbound_id": 2}
    report = Report()
    check_inbound_ids(stream, {"a": "1-0"}, "u", report)  # b was never accepted on any device
    assert report.violations == {"inbound_id": 3}


def test_changed_accept_ids_and_memory_growth_are_caught():
    accepted, ids = group_accepts([("u", "a", "1-0"), ("u", "a", "1-0"), ("u", "b", "2-0"), ("u", "b", "3-0")])
    assert accepted["u"] == {"a": "1-0", "b": "3-0"}
    report = Report()
    check_accept_ids(ids, report)
    assert report.violations["accept_id_changed"] == 1
    flat = [(t, 100 * 2**20) for t in range(20)]
    growing = [(t, (100 + 20 * t) * 2**20) for t in range(20)]
    report = Report()
    check_memory({"flat": flat, "growing": growing}, report, limit_mb=1000)
    assert report.violations == {"memory_growth": 1}
    report = Report()
    check_memory({"big": flat}, report, limit_mb=50)
    assert report.violations == {"memory_limit": 1}


def history(human_ids: list[str], replies: list[tuple[str, str]]) -> Report:
    report = Report()
    check_history("u/c", human_ids, replies, report)
    return report


def test_history_checks_pass_a_clean_conversation_and_catch_each_fault():
    clean = ["in-1-0", "in-3-0", "in-5-0"]
    replies = [("1-0", "reply 1 to: a"), ("3-0", "reply 2 to: b"), ("5-0", "reply 3 to: c")]
    assert history(clean, replies).ok
    assert history(clean[:2], replies[:2]).ok  # a message still waiting for its turn
    assert set(history(["in-1-0", "in-3-0", "in-3-0"], replies[:2]).violations) == {"history_duplicate"}
    assert set(history(["in-3-0", "in-1-0"], []).violations) == {"history_order"}
    assert set(history(["in-1-0"], replies[:2]).violations) == {"history_missing"}
    # The turn was computed on a history the store no longer has (a lost checkpoint).
    assert set(history(["in-3-0", "in-5-0"], [("5-0", "reply 3 to: c")]).violations) == {"history_fork"}


def delta(i: int, seq: int, text: str, cmid: str = "a") -> tuple[str, dict]:
    return f"{i}-0", {"conv": "c", "kind": "delta", "cmid": cmid, "seq": str(seq), "text": text}


def test_delta_checks_pass_streams_and_retries_and_catch_each_fault():
    final = entry(9, "assistant", "a", "reply 1 to: hi")
    clean = [entry(1, cmid="a"), delta(2, 0, "reply"), delta(3, 1, " 1 to"),
             delta(4, 0, "reply 1"), delta(5, 1, " to:"), delta(6, 2, " hi"), final]  # a retry restarts at 0
    report = Report()
    check_deltas(clean, "u", report)
    assert report.ok, report.examples

    def violations(stream: list) -> Report:
        found = Report()
        check_deltas(stream, "u", found)
        return found

    assert violations(clean + [delta(10, 3, "!")]).violations["delta_after_reply"] == 1
    assert violations([delta(2, 0, "reply"), delta(3, 2, " to"), final]).violations["delta_seq"] == 1
    assert violations([delta(2, 1, "reply"), final]).violations["delta_seq"] == 1  # no start
    interleaved = [delta(2, 0, "reply"), delta(3, 1, " 2 to"), final]  # a stale attempt's words
    assert violations(interleaved).violations["delta_text"] == 1


def test_the_last_attempts_deltas_must_rebuild_the_whole_reply():
    final = entry(9, "assistant", "a", "reply 1 to: hi")

    def found(stream: list, streamed: set[str] | None = None) -> Report:
        report = Report()
        check_deltas(stream, "u", report, streamed)
        return report

    whole = [delta(2, 0, "reply"), delta(3, 1, " 1 to:"), delta(4, 2, " hi"), final]
    assert found(whole, {"a"}).ok
    # A prefix is not enough: the tail " hi" never arrived as a delta.
    assert found(whole[:2] + [final], {"a"}).violations == {"delta_text": 1}
    # An earlier complete attempt does not make up for a short last one.
    assert found(whole[:3] + [delta(5, 0, "reply 1"), final], {"a"}).violations == {"delta_text": 1}
    # Text after the reply's end, or a piece joined with a space the model never sent.
    assert found(whole[:2] + [delta(4, 2, " hi!"), final]).violations == {"delta_text": 1}
    assert found([delta(2, 0, "reply 1 to:"), delta(3, 1, "hi"), final]).violations == {"delta_text": 1}
    # Two model runs: the writer starts the second one's first piece with the
    # newline that joins the reply's two AI messages; the pieces are appended as they are.
    two = entry(9, "assistant", "a", "first part\nsecond part")
    assert found([delta(2, 0, "first"), delta(3, 1, " part"), delta(4, 2, "\nsecond part"), two], {"a"}).ok
    assert found([delta(2, 0, "first part"), delta(3, 1, "second part"), two]).violations == {"delta_text": 1}
    # A reply without deltas is fine only for a message not meant to be streamed.
    assert found([final], set()).ok and found([final]).ok
    assert found([final], {"a"}).violations == {"delta_missing": 1}
    assert found(whole, set()).violations == {"delta_unexpected": 1}


def segment(mode: str, resume_from: str, recovered: bool, events: list, *, hello_at: int, welcome_at: int,
            closed_at: int | None = None, arrived: list[int] | None = None, asked: str | None = None) -> Segment:
    return Segment(mode, asked, resume_from, recovered, events=events, hello_at=hello_at, welcome_at=welcome_at,
                   closed_at=closed_at, arrived=arrived or [])


def test_a_new_devices_resume_point_is_computed_from_the_stream_not_taken_from_the_welcome():
    # The stream holds entries appended at 1 ... 4 ms; the window is 2 events.
    def new_device(seg: Segment) -> Report:
        report = Report()
        check_device(DeviceLog("u", "d", [seg]), STREAM, report, replay_window=2)
        return report

    # Hello after all four appends: the window is entries 3 and 4, so it resumes from 2-0.
    assert new_device(segment("new", "2-0", False, [event(3), event(4)], hello_at=10, welcome_at=11)).ok
    # A server that skipped entry 3 (and says so consistently) is caught.
    skipped = segment("new", "3-0", False, [event(4)], hello_at=10, welcome_at=11)
    assert new_device(skipped).violations == {"resume": 1}
    # So is one that replayed everything (and called it complete), or a short window called complete.
    assert new_device(segment("new", "0-0", True, [event(i) for i in (1, 2, 3, 4)], hello_at=10,
                              welcome_at=11)).violations == {"resume": 1}
    assert new_device(segment("new", "2-0", True, [event(3), event(4)], hello_at=10,
                              welcome_at=11)).violations == {"resume": 1}
    # Hello after two appends: everything was in the window, complete.
    early = segment("new", "0-0", True, [event(i) for i in (1, 2, 3, 4)], hello_at=3, welcome_at=3)
    assert new_device(early).ok
    assert new_device(segment("new", "0-0", False, early.events, hello_at=3, welcome_at=3)).violations == {
        "resume": 1}
    # Appends between the hello and the welcome: either length is right.
    assert new_device(segment("new", "0-0", True, early.events, hello_at=2, welcome_at=3)).ok
    assert new_device(segment("new", "1-0", False, early.events[1:], hello_at=2, welcome_at=3)).ok
    # Trimmed since: a window that reaches into trimmed entries cannot be judged, a later one can.
    report = Report()
    check_device(DeviceLog("u", "d", [segment("new", "0-0", True, early.events, hello_at=1, welcome_at=1)]),
                 STREAM, report, replay_window=2, trimmed="0-5")
    assert report.ok
    report = Report()
    check_device(DeviceLog("u", "d", [skipped]), STREAM, report, replay_window=2, trimmed="0-5")
    assert report.violations == {"resume": 1}


def timed(i: int, ts: int) -> tuple[str, dict]:
    entry_id, fields = entry(i)
    return entry_id, dict(fields, ts=str(ts))


def test_live_delivery_must_arrive_within_the_bound_while_connected():
    stream = [timed(1, 1_000), timed(2, 2_000), timed(3, 3_000)]
    events = [{"id": f"{i}-0"} for i in (1, 2, 3)]

    def delays(arrived: list[int], *, welcome_at: int = 500, closed_at: int | None = 20_000,
               outages: list | None = None) -> Report:
        seg = segment("last_id", "0-0", True, events[:len(arrived)], hello_at=welcome_at, welcome_at=welcome_at,
                      closed_at=closed_at, arrived=arrived, asked="0-0")
        report = Report()
        check_delays(DeviceLog("u", "d", [seg]), stream, report, bound_ms=1_000, outages=outages or [])
        return report

    assert delays([1_100, 2_050, 3_900]).ok
    # Event 3 took 1.5 s (a stalled live path healed by a sweep, say).
    assert delays([1_100, 2_050, 4_500]).violations == {"delay": 1}
    # Event 3 never came although the connection stayed open.
    assert delays([1_100, 2_050]).violations == {"delay": 1}
    # ... but no claim for a connection gone before the bound ran out, or for the replay.
    assert delays([1_100, 2_050], closed_at=3_500).ok
    assert delays([2_600, 2_650, 3_100], welcome_at=2_500).ok
    # An outage the run made pushes the bound's start to its end.
    assert delays([1_100, 2_050, 5_500], outages=[(3_200, 4_800)]).ok
    assert delays([1_100, 2_050, 6_500], outages=[(3_200, 4_800)]).violations == {"delay": 1}
    assert delays([1_100, 2_050, 4_500], outages=[(5_000, 6_000)]).violations == {"delay": 1}


def test_a_cancelled_reply_needs_a_stop_asked_after_its_message_and_the_text_its_deltas_had():
    from tests.chaos.checker import check_history

    accepted = {"m1": "1000-0"}
    stream = [("1000-0", {"kind": "user", "cmid": "m1", "conv": "c", "in": "1000-0"}),
              ("1001-0", {"kind": "delta", "cmid": "m1", "conv": "c", "seq": "0", "text": "reply 1"}),
              ("1002-0", {"kind": "cancelled", "cmid": "m1", "conv": "c", "in": "1000-0", "text": "reply 1"})]
    good = Report()
    check_replies(stream, accepted, "u", good, stops={"c": [1500]})
    check_deltas(stream, "u", good, streamed={"m1"})
    assert good.ok, good.examples
    for stops in ({}, {"c": [-5000]}, {"other": [1500]}):  # none, one long before the message, another conversation
        bad = Report()
        check_replies(stream, accepted, "u", bad, stops=stops)
        assert bad.violations == {"unexpected_cancel": 1}
    # A stop asked in an outage acts when it is over: it may stop a message
    # accepted until then (plus the slack), not one accepted later.
    for outage, fine in (((-5_500, 500), True), ((-5_500, -2_000), False), ((-3_000, -2_500), False)):
        report = Report()
        check_replies(stream, accepted, "u", report, stops={"c": [-5000]}, outages=[outage])
        assert report.ok is fine, (outage, report.violations)
    wrong = [*stream[:2], ("1002-0", {**stream[2][1], "text": "something else"})]
    bad = Report()
    check_deltas(wrong, "u", bad, streamed={"m1"})
    assert bad.violations == {"cancel_text": 1}
    stopped_before = [*stream[:2], ("1002-0", {**stream[2][1], "text": ""})]  # a later attempt stopped at once
    fine = Report()
    check_deltas(stopped_before, "u", fine, streamed={"m1"})
    assert fine.ok
    history = Report()
    check_history("u/c", ["in-1000-0"], [], history, cancelled=["1000-0"])
    assert history.violations == {"history_cancelled": 1}


def _fields(kind: str, cmid: str, text: str = "", inbound: str = "") -> dict:
    return {"conv": "c", "kind": kind, "cmid": cmid, "text": text, "in": inbound}


def test_questions_pass_one_asked_and_answered_turn_and_catch_each_fault():
    def answer(cmid: str) -> str:
        return f"yes-{cmid}"

    good = [("1-0", _fields("interrupt", "q")), ("2-0", _fields("resumed", "q", '"yes-q"')),
            ("3-0", _fields("assistant", "q", 'reply 1 to: x ask answered "yes-q"'))]
    report = Report()
    check_questions(good, {"q"}, "u", report, answer)
    assert report.ok
    faults = {
        "unexpected_interrupt": (good, set()),
        "question_count": (good[:1] + good, {"q"}),
        "question_order": ([good[1], good[0], good[2]], {"q"}),
        "question_answer": (good[:2] + [("3-0", _fields("assistant", "q", 'reply 1 to: x ask answered "no"'))],
                            {"q"}),
    }
    for kind, (stream, asking) in faults.items():
        report = Report()
        check_questions(stream, asking, "u", report, answer)
        assert report.violations[kind] >= 1, kind


def test_an_edit_replaces_from_the_edited_message_to_the_edit_and_history_must_not_hold_them():
    stream = [("1-0", _fields("user", "a", inbound="10-0")), ("2-0", _fields("user", "b", inbound="11-0")),
              ("3-0", _fields("user", "c", inbound="12-0")), ("4-0", _fields("replaced", "b", "message", "13-0")),
              ("5-0", _fields("user", "e", inbound="13-0"))]
    accepted = {"a": "10-0", "b": "11-0", "c": "12-0", "e": "13-0"}
    gone = replaced_by_edits(stream, accepted)
    assert gone == {"c": {"11-0", "12-0"}}
    replies = [("10-0", "reply 1 to: a"), ("11-0", "reply 2 to: b"), ("12-0", "reply 3 to: c"),
               ("13-0", "reply 2 to: e")]
    report = Report()
    check_history("c", ["in-10-0", "in-13-0"], replies, report, replaced=gone["c"])
    assert report.ok
    report = Report()
    check_history("c", ["in-10-0", "in-11-0", "in-13-0"], replies, report, replaced=gone["c"])
    assert report.violations["history_replaced"] == 1
    # A regenerate replaces no message.
    assert replaced_by_edits([("4-0", _fields("replaced", "b", "reply", "13-0"))], accepted) == {}
