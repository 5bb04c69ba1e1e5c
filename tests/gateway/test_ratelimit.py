import pytest

from switchboard.gateway.ratelimit import REJECT_WINDOW, FrameGate, TokenBucket, Verdict


def test_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True  # one token after 1/rate s
    assert bucket.take(0.1) is False


def test_bucket_refills_to_the_burst_only():
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_ignores_a_clock_going_back():
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert bucket.take(11.0)


@pytest.mark.parametrize("rate,burst", [(0, 1), (1, 0)])
def test_bucket_rejects_nonsense(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


def test_gate_refuses_above_the_rate_and_closes_a_flood():
    gate = FrameGate(rate=20, burst=40, reject_limit=50, now=0.0)
    verdicts = [gate.admit(0.0) for _ in range(40 + 50 + 1)]
    assert verdicts[:40] == [Verdict.PASS] * 40
    assert verdicts[40:90] == [Verdict.REFUSE] * 50
    assert verdicts[90] is Verdict.CLOSE
    assert gate.refused == 51


def test_gate_never_closes_a_client_that_keeps_to_the_rate():
    gate = FrameGate(rate=20, burst=40, reject_limit=50, now=0.0)
    now = 0.0
    for _ in range(10_000):
        assert gate.admit(now) is Verdict.PASS
        now += 1 / 20


def test_gate_forgives_refusals_over_the_window():
    """A client a little too fast, refused now and then but less often than
    reject_limit per REJECT_WINDOW, is never closed."""
    gate = FrameGate(rate=10, burst=10, reject_limit=5, now=0.0)
    refusals_per_s = 0.4  # below 5 / REJECT_WINDOW = 0.5
    step = 1 / (10 + refusals_per_s)
    seen = [gate.admit(i * step) for i in range(5_000)]
    assert Verdict.CLOSE not in seen
    assert seen.count(Verdict.REFUSE) > 100


def test_gate_closes_a_client_refused_faster_than_the_window_allows():
    gate = FrameGate(rate=10, burst=10, reject_limit=5, now=0.0)
    step = 1 / (10 + 1.0)  # one refusal per second, twice what the window forgives
    seen = [gate.admit(i * step) for i in range(5_000)]
    assert Verdict.CLOSE in seen
