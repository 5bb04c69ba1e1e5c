"""When a connection's token runs out.

A connection lives as long as its token: until the token's ``exp`` plus
``JWT_LEEWAY`` (the same instant :class:`~.auth.Verifier` stops accepting
it). A ``refresh`` frame with a new token of the same user moves that
instant. Once it has passed, the gateway processes no more of the
connection's frames and closes it with ``token_expired`` / 4004; the client
reconnects with a new token and ``last_id`` and loses nothing (events it had
not received are replayed from the user's stream).

:class:`TokenDeadline` is the decision (no I/O; a clock is passed in);
:meth:`TokenDeadline.wait` is the timer, woken early when a refresh moves the
deadline so that an earlier one is honoured too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable


class TokenDeadline:
    def __init__(self, expires_at: float, leeway: float, clock: Callable[[], float] = time.time):
        self.expires_at = expires_at
        self.leeway = leeway
        self._clock = clock
        self._moved = asyncio.Event()
        self._ended = False

    @property
    def at(self) -> float:
        """Unix time after which the connection must not go on."""
        return self.expires_at + self.leeway

    def passed(self) -> bool:
        return self._clock() >= self.at

    def move(self, expires_at: float) -> None:
        """A refresh was accepted: the connection now lasts for the new token."""
        self.expires_at = expires_at
        self._moved.set()

    def end(self) -> bool:
        """True the first time only: whoever sees expiry first (the timer or
        the reader) closes the connection, once."""
        first, self._ended = not self._ended, True
        return first

    async def wait(self) -> None:
        """Return once the deadline has passed, however often it moved."""
        while (left := self.at - self._clock()) > 0:
            self._moved.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), left)
