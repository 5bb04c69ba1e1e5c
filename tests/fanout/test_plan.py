from switchboard.fanout.plan import EVENT_OVERHEAD, Attachment, RoundBudget, by_gateway, event_bytes, plan, read_from
from switchboard.shared.protocol import Event


def ev(i: int) -> Event:
    return Event(id=f"{i}-0", conversation_id="c", kind="user", text=str(i))


def att(conn: str, cursor: str) -> Attachment:
    return Attachment("gw", conn, "u", cursor)


def test_read_starts_at_the_slowest_cursor():
    assert read_from([att("a", "5-0"), att("b", "3-0"), att("c", "10-0")]) == "3-0"
    assert read_from([]) == "0-0"


def test_each_connection_gets_everything_after_its_cursor_and_advances():
    a, b = att("a", "3-0"), att("b", "5-0")
    batches = plan([a, b], [ev(4), ev(5), ev(6)], start="3-0", trimmed="0-0")
    got = {x.attachment.conn: (x.prev, [e.id for e in x.events]) for x in batches}
    assert got == {"a": ("3-0", ["4-0", "5-0", "6-0"]), "b": ("5-0", ["6-0"])}
    assert (a.cursor, b.cursor) == ("6-0", "6-0")
    assert plan([a, b], [], start="6-0", trimmed="0-0") == []


def test_a_connection_behind_the_read_is_left_for_the_next_read():
    late = att("late", "1-0")
    assert plan([late], [ev(4)], start="3-0", trimmed="0-0") == []
    assert late.cursor == "1-0"


def test_a_cursor_behind_the_trimmed_mark_is_lost_not_skipped():
    behind, fine = att("behind", "2-0"), att("fine", "7-0")
    batches = plan([behind, fine], [ev(8)], start="2-0", trimmed="5-0")
    lost = [b for b in batches if b.lost]
    assert [b.attachment.conn for b in lost] == ["behind"] and lost[0].events == []
    assert [b.attachment.conn for b in batches if not b.lost] == ["fine"]
    exact = att("exact", "5-0")  # everything after the newest trimmed id is retained
    assert not plan([exact], [ev(6)], start="5-0", trimmed="5-0")[0].lost


def test_one_message_per_gateway_carries_the_longest_suffix_once():
    a, b, c = att("a", "3-0"), att("b", "5-0"), Attachment("gw2", "c", "u", "4-0")
    lost = att("lost", "1-0")
    batches = plan([a, b, c, lost], [ev(4), ev(5), ev(6)], start="1-0", trimmed="2-0")
    groups = {g.gateway: g for g in by_gateway(batches)}
    assert set(groups) == {"gw", "gw2"}
    gw = groups["gw"]
    assert [e.id for e in gw.events] == ["4-0", "5-0", "6-0"]  # a's batch, which holds b's
    assert {(t.attachment.conn, t.prev, t.lost) for t in gw.targets} == {
        ("a", "3-0", False), ("b", "5-0", False), ("lost", "1-0", True)}
    assert [e.id for e in groups["gw2"].events] == ["5-0", "6-0"]
    only_lost = by_gateway(plan([att("x", "1-0")], [ev(4)], start="1-0", trimmed="2-0"))
    assert only_lost[0].events == [] and only_lost[0].targets[0].lost


def test_notices_are_delivered_as_they_are_only_when_they_continue_the_cursor():
    from switchboard.fanout.plan import continuing
    from switchboard.shared.outbound import AppendNotice

    def notice(prev: str, id_: str) -> AppendNotice:
        return AppendNotice(prev, id_, ["kind", "assistant", "conv", "c", "text", f"t{id_}", "cmid", "m", "dev", "",
                                  "ts", "1", "in", "1-0"])

    chain = [notice("0-0", "1-0"), notice("1-0", "2-0"), notice("2-0", "3-0")]
    assert [e.id for e in continuing(chain, "0-0")] == ["1-0", "2-0", "3-0"]
    assert continuing(chain, "0-0")[1].text == "t2-0" and continuing(chain, "0-0")[1].kind == "assistant"
    assert [e.id for e in continuing(chain, "1-0")] == ["2-0", "3-0"]  # delivered ones are skipped
    assert continuing(chain, "3-0") == []  # nothing new: no read needed
    assert continuing(chain[1:], "0-0") is None  # the notice of 1-0 was missed: read the stream
    assert continuing([chain[0], chain[2]], "0-0") is None  # a hole in the middle
    assert continuing([], "5-0") == []
    assert continuing([notice("4-0", "6-0")], "5-0") is None  # starts elsewhere (say, after a trim)


def test_a_round_budget_admits_the_first_delivery_per_gateway_then_what_fits():
    budget = RoundBudget(100)
    assert budget.admit(["gw1"], 500)  # the first to a gateway always goes, however large
    assert not budget.admit(["gw1"], 1)
    assert budget.admit(["gw2"], 60) and budget.admit(["gw2"], 40)
    assert not budget.admit(["gw2"], 1)
    assert not budget.admit(["gw2", "gw3"], 10)  # one full gateway holds the user back ...
    assert budget.spent.get("gw3", 0) == 0  # ... and charges none of its others
    assert budget.admit(["gw3"], 10)


def test_event_bytes_counts_the_text_in_utf8_and_the_overhead():
    small = Event(id="1-0", conversation_id="c", kind="user", text="é" * 10)
    assert event_bytes(small) == 20 + 3 + 1 + EVENT_OVERHEAD
