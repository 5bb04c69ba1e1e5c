"""Frames per second per connection: a token bucket, and the gate built on
two of them that tells the gateway what to do with each frame.

Pure: time is passed in (``now``, seconds of a monotonic clock), so the
tests drive it without sleeping.
"""

from __future__ import annotations

import enum


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` held; a new bucket is full."""

    def __init__(self, rate: float, burst: float, now: float):
        if rate <= 0 or burst < 1:
            raise ValueError(f"a bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; False (and nothing taken) if not."""
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Verdict(enum.Enum):
    PASS = "pass"  #: handle the frame
    REFUSE = "refuse"  #: answer ``rate_limited`` and drop the frame
    CLOSE = "close"  #: too many refused: close the connection 4006


#: The window of ``reject_limit``: a connection may be refused that many
#: frames per REJECT_WINDOW seconds (sustained) before it is closed.
REJECT_WINDOW = 10.0


class FrameGate:
    """The frame rate limit of one connection.

    Frames pass while the connection keeps to ``rate`` per second (with
    ``burst`` at once). A frame above the rate is refused; a connection
    refused more than ``reject_limit`` frames in about REJECT_WINDOW seconds
    (a second bucket: ``reject_limit`` at once, refilled over the window) is
    flooding and gets CLOSE. A client that backs off after ``rate_limited``
    is never closed."""

    def __init__(self, rate: float, burst: int, reject_limit: int, now: float):
        self.frames = TokenBucket(rate, burst, now)
        self.refusals = TokenBucket(reject_limit / REJECT_WINDOW, reject_limit, now)
        self.refused = 0  #: frames refused so far (for logs)

    def admit(self, now: float) -> Verdict:
        if self.frames.take(now):
            return Verdict.PASS
        self.refused += 1
        return Verdict.REFUSE if self.refusals.take(now) else Verdict.CLOSE
