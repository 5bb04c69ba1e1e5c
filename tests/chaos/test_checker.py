"""The checker must catch each kind of violation (a check that cannot fail
proves nothing), and pass a clean run."""

from tests.chaos.checker import (
    DeviceLog, Report, Segment, check_accept_ids, check_deltas, check_device, check_history, check_memory,
    check_replies,
    group_accepts,
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
