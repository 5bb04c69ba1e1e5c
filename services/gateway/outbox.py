"""A connection's outbox: the bounded queue between the gateway and the one
task that writes to the socket.

Frames wait here already encoded (the UTF-8 bytes of one JSON text frame), so
an event going to several connections of a user is encoded once, and the
writer can take everything that is queued and send it in one socket write
instead of one write (one system call) per frame.

At the bound (``size`` frames or ``max_bytes`` bytes, whichever comes
first) nobody writes past it:

- :meth:`Outbox.offer` -- deliveries from the hub, which must never wait for
  one slow client -- queues only what fits and says how much that was; the
  hub holds the rest back in Redis (see :mod:`.hub`, *pausing*);
- :meth:`Outbox.put` -- replies to the client's own frames -- waits for room,
  which stops reading that client's frames until it reads its own.

A frame counted in frames alone would let 1024 events of 1 MiB each hold a
gigabyte for one client that does not read. The first frame offered to an
empty outbox always fits, even when larger than ``max_bytes``: otherwise an
event of the largest size could never be delivered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence


class Outbox:
    def __init__(self, size: int, max_bytes: int = 8 << 20):
        self.size = size
        self.max_bytes = max_bytes
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._nonempty = asyncio.Event()
        self._taken = asyncio.Event()  #: set whenever frames leave; waiters re-check

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def bytes(self) -> int:
        """Bytes queued."""
        return self._bytes

    @property
    def room(self) -> int:
        """Frames that would still fit by count (bytes aside)."""
        return self.size - len(self._frames)

    def fitting(self, frames: Sequence[bytes]) -> int:
        """How many leading frames of ``frames`` would fit, by count and by
        bytes (the first frame of an empty outbox always fits)."""
        count = min(len(frames), self.room)
        free = self.max_bytes - self._bytes
        for i in range(count):
            free -= len(frames[i])
            if free < 0 and (i or self._frames):
                return i
        return count

    def offer(self, frames: Sequence[bytes]) -> int:
        """Queue the leading frames of ``frames`` that fit; return how many."""
        count = self.fitting(frames)
        if count:
            self._append(frames[:count])
        return count

    async def put(self, frame: bytes) -> None:
        """Queue one frame, waiting for room (by count and by bytes)."""
        while not self.fitting((frame,)):
            self._taken.clear()
            await self._taken.wait()
        self._append((frame,))

    async def wait_room(self, frames: int, free_bytes: int = 0) -> None:
        """Wait until ``frames`` more frames would fit and ``free_bytes`` bytes
        are free (or the outbox is empty)."""
        while self.room < frames or (self._frames and self.max_bytes - self._bytes < free_bytes):
            # Nothing runs between this check and the wait: clearing here
            # cannot lose a wake-up.
            self._taken.clear()
            await self._taken.wait()

    def _append(self, frames: Sequence[bytes]) -> None:
        self._frames.extend(frames)
        self._bytes += sum(map(len, frames))
        self._nonempty.set()

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
        self._bytes -= size
        if not self._frames:
            self._nonempty.clear()
        self._taken.set()
        return frames
