from switchboard.fanout.plan import Attachment, plan, read_from
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
