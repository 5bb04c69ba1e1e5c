"""Close-code decisions and the reconnect back-off schedule."""

from __future__ import annotations

import random

import pytest

from switchboard.client.policy import REPLACED_REASON, Backoff, Next, after_close


@pytest.mark.parametrize("code", [1000, 4001, 4002, 1002, 1007, 1009])
def test_codes_that_end_the_client(code):
    assert after_close(code, has_token_provider=True) is Next.STOP


def test_a_replaced_connection_does_not_reconnect_but_too_many_connections_does():
    assert after_close(4005, REPLACED_REASON) is Next.STOP
    assert after_close(4005, "too many connections") is Next.RECONNECT


def test_an_expired_token_needs_a_provider():
    assert after_close(4004, has_token_provider=True) is Next.NEW_TOKEN
    assert after_close(4004, has_token_provider=False) is Next.STOP


@pytest.mark.parametrize("code", [None, 1001, 1006, 1011, 4003, 4006, 4008, 4009, 4999])
def test_every_other_ending_reconnects(code):
    assert after_close(code) is Next.RECONNECT


def test_the_back_off_doubles_from_half_a_second_to_thirty():
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.ceiling(10_000) == 30  # no overflow on a long outage


def test_the_jitter_spreads_each_delay_over_the_upper_half_of_its_ceiling():
    backoff, rand = Backoff(), random.Random(7)
    for attempt in range(10):
        delays = [backoff.delay(attempt, rand) for _ in range(200)]
        ceiling = backoff.ceiling(attempt)
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # spread, not one value: devices do not reconnect in step
