"""A connection's outbox: the bounded queue between the gateway and the one
task that writes to the socket.

Frames wait here already encoded (the UTF-8 bytes of one JSON text frame), so
an event going to several connections of a user is encoded once, and the
writer can take everything that is queued and send it in one socket write
instead of one write (one system call) per frame.

What happens at the bound (``size`` frames) depends on who is writing:

- :meth:`Outbox.offer` -- deliveries from the hub, which must never wait for
  one slow client -- refuses, and the caller closes the connection with
  ``SLOW_CONSUMER`` (4008); the client reconnects with ``last_id`` and loses
  nothing;
- :meth:`Outbox.put` -- replies to the client's own frames -- waits for room,
  which stops reading that client's frames until it reads its own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence


class Outbox:
    def __init__(self, size: int):
        self.size = size
        self._frames: deque[bytes] = deque()
        self._nonempty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frames: Sequence[bytes]) -> bool:
        """Queue all of ``frames``, or none of them if they do not fit."""
        if len(self._frames) + len(frames) > self.size:
            return False
        if frames:
            self._frames.extend(frames)
            self._changed()
        return True

    async def put(self, frame: bytes) -> None:
        """Queue one frame, waiting for room."""
        while len(self._frames) >= self.size:
            await self._room.wait()
        self._frames.append(frame)
        self._changed()

    async def take(self, max_frames: int, max_bytes: int) -> list[bytes]:
        """Wait for at least one frame; return the oldest ones, in order, up to
        ``max_frames`` frames and (beyond the first) ``max_bytes`` bytes."""
        while not self._frames:
            await self._nonempty.wait()
        frames = [self._frames.popleft()]
        size = len(frames[0])
        while self._frames and len(frames) < max_frames and size + len(self._frames[0]) <= max_bytes:
            frame = self._frames.popleft()
            frames.append(frame)
            size += len(frame)
        self._changed()
        return frames

    def _changed(self) -> None:
        if self._frames:
            self._nonempty.set()
        else:
            self._nonempty.clear()
        if len(self._frames) < self.size:
            self._room.set()
        else:
            self._room.clear()
