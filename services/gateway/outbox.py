"""A connection's outbox: the bounded queue between the gateway and the one
task that writes to the socket.

Frames wait here already encoded (the UTF-8 bytes of one JSON text frame), so
an event going to several connections of a user is encoded once, and the
writer can take everything that is queued and send it in one socket write
instead of one write (one system call) per frame.

At the bound (``size`` frames) nobody writes past it:

- :meth:`Outbox.offer` -- deliveries from the hub, which must never wait for
  one slow client -- queues only what fits and says how much that was; the
  hub holds the rest back in Redis (see :mod:`.hub`, *pausing*);
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
        self._taken = asyncio.Event()  #: set whenever frames leave; waiters re-check

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def room(self) -> int:
        return self.size - len(self._frames)

    def offer(self, frames: Sequence[bytes]) -> int:
        """Queue the leading frames of ``frames`` that fit; return how many."""
        count = min(len(frames), self.room)
        if count:
            self._frames.extend(frames[:count])
            self._nonempty.set()
        return count

    async def put(self, frame: bytes) -> None:
        """Queue one frame, waiting for room."""
        await self.wait_room(1)
        self._frames.append(frame)
        self._nonempty.set()

    async def wait_room(self, frames: int) -> None:
        """Wait until ``frames`` more frames would fit."""
        while self.room < frames:
            # Nothing runs between this check and the wait: clearing here
            # cannot lose a wake-up.
            self._taken.clear()
            await self._taken.wait()

    async def take(self, max_frames: int, max_bytes: int) -> list[bytes]:
        """Wait for at least one frame; return the oldest ones, in order, up to
        ``max_frames`` frames and (beyond the first) ``max_bytes`` bytes."""
        while not self._frames:
            self._nonempty.clear()
            await self._nonempty.wait()
        frames = [self._frames.popleft()]
        size = len(frames[0])
        while self._frames and len(frames) < max_frames and size + len(self._frames[0]) <= max_bytes:
            frame = self._frames.popleft()
            frames.append(frame)
            size += len(frame)
        if not self._frames:
            self._nonempty.clear()
        self._taken.set()
        return frames
