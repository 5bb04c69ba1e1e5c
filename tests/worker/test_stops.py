"""The register of running entries that cancel notices stop (``stops.Stops``)."""

from __future__ import annotations

from switchboard.worker.stops import Stops

C = ("alice", "trip")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_notice_stops_the_running_entry_at_or_before_up_to_only():
    stops = Stops()
    stop = stops.watch(C, "5-0")
    assert not stops.cancel(C, "4-9") and not stop.is_set()  # the running entry came after the notice's
    assert stops.cancel(C, "5-0") and stop.is_set()
    other = stops.watch(("alice", "other"), "1-0")
    assert not other.is_set()  # another conversation is not touched


def test_a_notice_that_came_first_stops_the_entry_that_starts_just_after():
    clock = Clock()
    stops = Stops(clock=clock, early_s=5.0)
    assert not stops.cancel(C, "7-0")  # nothing runs yet: kept
    assert stops.watch(C, "7-0").is_set()
    stops.unwatch(C, "7-0")
    assert not stops.watch(C, "8-0").is_set()  # the notice was used up; 8-0 came after it anyway


def test_an_early_notice_expires_and_does_not_stop_a_later_entry():
    clock = Clock()
    stops = Stops(clock=clock, early_s=5.0)
    stops.cancel(C, "7-0")
    assert not stops.watch(C, "8-0").is_set()  # later than up_to
    stops.cancel(C, "9-0")
    clock.now += 5.1
    assert not stops.watch(C, "9-0").is_set()  # too old


def test_early_notices_are_bounded_in_count_and_age():
    clock = Clock()
    stops = Stops(clock=clock, early_s=5.0, early_max=3)
    for n in range(5):
        stops.cancel(("u", f"c{n}"), "1-0")
    assert len(stops) == 3
    assert not stops.watch(("u", "c0"), "1-0").is_set()  # the oldest went first
    assert stops.watch(("u", "c4"), "1-0").is_set()
    clock.now += 6
    stops.cancel(("u", "new"), "1-0")  # keeping one drops the expired ones
    assert len(stops) == 1


def test_unwatch_of_an_entry_that_was_replaced_keeps_the_newer_registration():
    stops = Stops()
    stops.watch(C, "1-0")
    newer = stops.watch(C, "2-0")
    stops.unwatch(C, "1-0")
    assert stops.cancel(C, "2-0") and newer.is_set()
    stops.unwatch(C, "2-0")
    assert not stops.cancel(C, "2-0")  # nothing runs: kept as an early notice instead
