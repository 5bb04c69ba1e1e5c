"""What to do after a connection ends, and when: pure functions.

The close-code table is docs/protocol.md's ("Close codes"): a few codes end
the client (it was asked to stop, or reconnecting cannot help), 4004 needs a
new token first, every other ending -- a drop without a close frame included
-- reconnects with ``last_id`` and ``epoch`` after an exponential back-off
with jitter.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from switchboard.shared.protocol import CloseCode

#: The reason the gateway gives when a newer connection of the same device replaced this one (4005).
REPLACED_REASON = "replaced by a newer connection of this device"


class Next(enum.Enum):
    RECONNECT = "reconnect"  #: after the back-off
    NEW_TOKEN = "new_token"  #: ask the token provider, then reconnect
    STOP = "stop"  #: do not reconnect


#: Codes after which reconnecting cannot help: the application must act.
_TERMINAL = {CloseCode.NORMAL, CloseCode.UNAUTHORIZED, CloseCode.PROTOCOL_ERROR, 1002, 1007,
             CloseCode.MESSAGE_TOO_BIG}


def after_close(code: int | None, reason: str = "", *, has_token_provider: bool = False) -> Next:
    """The decision for a connection closed with ``code`` (None: dropped without a close frame)."""
    if code is None:
        return Next.RECONNECT
    if code in _TERMINAL:
        return Next.STOP
    if code == CloseCode.TOKEN_EXPIRED:
        return Next.NEW_TOKEN if has_token_provider else Next.STOP
    if code == CloseCode.TOO_MANY_CONNECTIONS and reason == REPLACED_REASON:
        return Next.STOP  # this device connected again elsewhere: that connection goes on
    return Next.RECONNECT


@dataclass(frozen=True)
class Backoff:
    """Delays before reconnect attempts: ``first`` doubling up to ``cap``, with full jitter
    over the upper half (``delay(n)`` lies in ``[d/2, d]`` for the attempt's ``d``)."""

    first: float = 0.5
    cap: float = 30.0
    factor: float = 2.0

    def ceiling(self, attempt: int) -> float:
        """The attempt's delay before jitter (attempt 0 is the first reconnect)."""
        return min(self.cap, self.first * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + (rand or random).random() * ceiling / 2
