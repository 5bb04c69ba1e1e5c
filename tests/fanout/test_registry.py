"""The fanout's per-user state (no Redis): attaching, notices and their
bound, rounds, cutting what a round brought, and dropping gateways."""

from __future__ import annotations

import pytest

from switchboard.fanout.registry import GatewayWatch, Read, Registry
from switchboard.shared.outbound import AppendNotice
from switchboard.shared.protocol import Event


def ev(i: int) -> Event:
    return Event(id=f"{i}-0", conversation_id="c", kind="user", text=str(i))


def notice(prev: int, id_: int) -> AppendNotice:
    return AppendNotice(f"{prev}-0", f"{id_}-0", ["kind", "user", "conv", "c", "text", str(id_)])


def settled(registry: Registry) -> Registry:
    """Take every pending round, as the pump does, so that nothing is dirty."""
    while registry.dirty:
        registry.take_round(100)
    return registry


def attached(*conns: tuple[str, str, str, str], batch: int = 4) -> Registry:
    registry = Registry(batch)
    for gateway, conn, user, cursor in conns:
        registry.attach(gateway, conn, user, cursor)
    return settled(registry)


def test_an_attach_reads_the_user_from_its_smallest_cursor():
    registry = Registry(4)
    registry.attach("gw", "a", "u", "5-0")
    registry.attach("gw", "b", "u", "3-0")
    assert "u" in registry and registry.dirty
    round_ = registry.take_round(100)
    assert round_.reads == [Read("u", "3-0")] and round_.direct == []
    assert not registry.dirty


def test_notices_that_continue_the_cursor_are_delivered_without_a_read():
    registry = attached(("gw", "a", "u", "3-0"))
    assert registry.on_notice("u", notice(3, 4)) and registry.on_notice("u", notice(4, 5))
    round_ = registry.take_round(100)
    assert round_.reads == [] and len(round_.direct) == 1
    direct = round_.direct[0]
    assert (direct.user, direct.start, [e.id for e in direct.events]) == ("u", "3-0", ["4-0", "5-0"])
    assert not registry.dirty  # the notices went with the round


def test_notices_already_delivered_need_nothing():
    registry = attached(("gw", "a", "u", "5-0"))
    registry.on_notice("u", notice(4, 5))
    round_ = registry.take_round(100)
    assert round_.users == ["u"] and round_.reads == [] and round_.direct == []


def test_a_notice_that_does_not_continue_the_cursor_means_a_read():
    registry = attached(("gw", "a", "u", "3-0"))
    registry.on_notice("u", notice(4, 5))  # the notice of 4-0 was missed
    assert registry.take_round(100).reads == [Read("u", "3-0")]


def test_an_unparsable_notice_means_a_read():
    registry = attached(("gw", "a", "u", "3-0"))
    registry.on_notice("u", notice(3, 4))
    registry.on_notice("u", None)
    assert registry.take_round(100).reads == [Read("u", "3-0")]


def test_notices_are_kept_up_to_the_batch_then_the_user_is_read():
    registry = attached(("gw", "a", "u", "0-0"), batch=2)
    for i in range(1, 4):
        registry.on_notice("u", notice(i - 1, i))
    assert registry.take_round(100).reads == [Read("u", "0-0")]  # the third passed the bound
    for i in range(1, 3):
        registry.on_notice("u", notice(i - 1, i))
    assert [e.id for e in registry.take_round(100).direct[0].events] == ["1-0", "2-0"]  # at the bound: kept


def test_notices_for_users_not_attached_are_ignored():
    registry = Registry(4)
    assert not registry.on_notice("nobody", notice(0, 1))
    assert not registry.dirty


def test_an_attach_after_notices_still_reads():
    registry = attached(("gw", "a", "u", "3-0"))
    registry.on_notice("u", notice(3, 4))
    registry.attach("gw", "b", "u", "3-0")
    assert registry.take_round(100).reads == [Read("u", "3-0")]


def test_a_round_takes_at_most_its_limit_and_leaves_the_rest_dirty():
    registry = Registry(4)
    for i in range(5):
        registry.attach("gw", f"c{i}", f"u{i}", "0-0")
    first = registry.take_round(3)
    assert len(first.users) == 3 and len(first.reads) == 3 and registry.dirty
    second = registry.take_round(3)
    assert sorted(first.users + second.users) == [f"u{i}" for i in range(5)] and not registry.dirty


def test_a_failed_round_is_taken_again_with_reads():
    registry = attached(("gw", "a", "u", "3-0"))
    registry.on_notice("u", notice(3, 4))
    failed = registry.take_round(100)
    assert failed.direct and not registry.dirty
    registry.retry(failed)
    assert registry.take_round(100).reads == [Read("u", "3-0")]  # its notices went with the round


def test_the_sweep_reads_every_user():
    registry = attached(("gw", "a", "u", "3-0"), ("gw", "b", "v", "1-0"))
    assert registry.mark_all()
    assert sorted(r.user for r in registry.take_round(100).reads) == ["u", "v"]
    assert not Registry(4).mark_all()


def test_a_detached_user_is_gone_with_its_last_connection():
    registry = attached(("gw", "a", "u", "3-0"), ("gw", "b", "u", "3-0"))
    registry.on_notice("u", notice(3, 4))
    assert not registry.detach("u", "a")  # b is still attached
    assert registry.detach("u", "b")
    assert "u" not in registry
    assert registry.take_round(100).direct == []  # dirty before the detach: skipped
    assert not registry.detach("u", "b") and not registry.detach("nobody", "x")


def test_cut_advances_cursors_and_merges_per_gateway():
    registry = attached(("gw1", "a", "u", "3-0"), ("gw1", "b", "u", "4-0"), ("gw2", "c", "u", "5-0"))
    groups = {g.gateway: g for g in registry.cut("u", "3-0", [ev(4), ev(5), ev(6)], "0-0")}
    assert [e.id for e in groups["gw1"].events] == ["4-0", "5-0", "6-0"]
    assert {(t.attachment.conn, t.prev) for t in groups["gw1"].targets} == {("a", "3-0"), ("b", "4-0")}
    assert [e.id for e in groups["gw2"].events] == ["6-0"]
    assert {a.cursor for a in registry.attachments("u")} == {"6-0"}
    assert not registry.dirty  # less than a batch: all was read


def test_cut_drops_connections_whose_events_were_trimmed():
    registry = attached(("gw", "behind", "u", "1-0"), ("gw", "fine", "u", "6-0"))
    (group,) = registry.cut("u", "1-0", [ev(7)], "5-0")
    assert {(t.attachment.conn, t.lost) for t in group.targets} == {("behind", True), ("fine", False)}
    assert [a.conn for a in registry.attachments("u")] == ["fine"]
    # The last one dropped this way leaves the user (still subscribed) until its detach.
    registry = attached(("gw", "behind", "u", "1-0"))
    registry.cut("u", "1-0", [ev(7)], "5-0")
    assert "u" in registry and registry.attachments("u") == []
    registry.mark_all()
    assert registry.take_round(100).reads == []  # nothing to read for nobody
    assert registry.detach("u", "behind")


def test_a_full_read_leaves_the_user_to_read_on():
    registry = attached(("gw", "a", "u", "0-0"), batch=2)
    registry.cut("u", "0-0", [ev(1), ev(2)], "0-0")
    assert registry.take_round(100).reads == [Read("u", "2-0")]


def test_cut_for_a_user_gone_meanwhile_sends_nothing():
    registry = attached(("gw", "a", "u", "0-0"))
    registry.detach("u", "a")
    assert registry.cut("u", "0-0", [ev(1)], "0-0") == []


def test_dropping_a_gateway_forgets_its_connections_only():
    registry = attached(("gw1", "a", "u", "0-0"), ("gw2", "b", "u", "0-0"), ("gw1", "c", "v", "0-0"))
    assert registry.gateways() == ["gw1", "gw2"]
    assert registry.drop_gateway("gw1") == ["v"]  # u still has b
    assert [a.conn for a in registry.attachments("u")] == ["b"] and "v" not in registry
    assert registry.gateways() == ["gw2"]
    assert registry.drop_gateway("gw-unknown") == []


def test_clear_forgets_everything():
    registry = attached(("gw", "a", "u", "0-0"))
    registry.on_notice("u", notice(0, 1))
    registry.clear()
    assert "u" not in registry and not registry.dirty and registry.gateways() == []


def test_a_gateway_is_gone_after_two_silent_sweeps_in_a_row():
    watch = GatewayWatch()
    assert not watch.silent("gw")
    watch.heard("gw")  # it listened again in between
    assert not watch.silent("gw")
    assert watch.silent("gw")
    assert not watch.silent("gw")  # counted afresh afterwards



def test_a_read_cut_by_its_byte_budget_leaves_the_user_to_read_on():
    registry = attached(("gw", "a", "u", "0-0"), batch=100)
    registry.cut("u", "0-0", [ev(1), ev(2)], "0-0", more=True)
    assert registry.take_round(100).reads == [Read("u", "2-0")]
    registry.cut("u", "2-0", [ev(3)], "0-0")
    assert not registry.dirty  # the end of the stream: nothing more to read


def test_notices_are_kept_up_to_the_byte_bound_then_the_user_is_read():
    registry = Registry(100, batch_bytes=250)
    registry.attach("gw", "a", "u", "0-0")
    settled(registry)
    registry.on_notice("u", notice(0, 1), 300)  # the first is kept even when larger than the bound
    round_ = registry.take_round(100)
    assert [e.id for e in round_.direct[0].events] == ["1-0"]
    registry.on_notice("u", notice(0, 1), 100)
    registry.on_notice("u", notice(1, 2), 100)
    registry.on_notice("u", notice(2, 3), 100)  # 300 > 250: dropped, the user is read
    round_ = registry.take_round(100)
    assert round_.direct == [] and round_.reads == [Read("u", "0-0")]


def test_a_deferred_user_is_read_again_from_its_unchanged_cursor():
    registry = attached(("gw", "a", "u", "3-0"))
    registry.on_notice("u", notice(3, 4))
    registry.take_round(100)
    registry.defer("u")
    assert registry.take_round(100).reads == [Read("u", "3-0")]
    assert registry.gateways_of("u") == {"gw"}


def test_a_user_whose_read_was_cut_is_read_on_only_after_the_pace():
    registry = Registry(100, batch_bytes=1000, pace=0.05)
    registry.attach("gw", "a", "big", "0-0")
    registry.attach("gw", "b", "small", "0-0")
    settled(registry)
    registry.cut("big", "0-0", [ev(1)], "0-0", more=True, now=10.0)
    registry.on_notice("small", notice(0, 2))
    assert registry.next_due(10.0) == 0.0  # "small" is due now
    round_ = registry.take_round(100, now=10.01)
    assert round_.users == ["small"]  # the replay waits its turn ...
    assert registry.next_due(10.01) == pytest.approx(0.04)
    assert registry.take_round(100, now=10.05).reads == [Read("big", "1-0")]  # ... and goes on from its cursor
    assert registry.next_due(10.05) is None
