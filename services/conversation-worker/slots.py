"""Worker slots shared fairly between users.

A worker runs at most ``WORKER_CONCURRENCY`` turns at once. Which waiting
conversation gets a slot that frees is decided here: the users with
conversations waiting take turns, round robin, one slot each, so a user with
hundreds of conversations queued gets one slot in turn like everyone else
instead of every slot until their backlog is gone. A drain holds its slot for
one turn at a time when others wait (:meth:`FairSlots.pass_on` between
turns), so a new user's first turn waits for the first slot to free -- about
one turn's time divided by the number of slots -- not for anyone's backlog.

On shutdown the slots are closed (:meth:`FairSlots.close`): every waiter,
and every later request, gets :class:`SlotsClosed`, so a worker that stops
hands back the conversations it took ahead instead of running their turns
through its grace period.

Only the order of waiters is kept here; no I/O, no clocks: tested on its own.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

from switchboard.shared.errors import SwitchboardError


class SlotsClosed(SwitchboardError):
    """The worker is stopping: no more turns start here."""


class FairSlots:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError("at least one slot")
        self.size = size
        self.busy = 0  #: slots held
        self.closed = False
        # user -> that user's waiters, oldest first; users in turn order.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        """Waiters over all users."""
        return sum(len(q) for q in self._waiting.values())

    def contended(self) -> bool:
        """Whether anyone waits for a slot."""
        return bool(self._waiting)

    async def acquire(self, user: str) -> None:
        """Take a slot for ``user``, waiting in turn if none is free."""
        if self.closed:
            raise SlotsClosed("the worker is stopping")
        if self.busy < self.size and not self._waiting:
            self.busy += 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()  # granted just as we were cancelled: pass it on
            else:
                self._forget(user, future)
            raise

    def release(self) -> None:
        """Give a slot back: to the next user in turn, or free it."""
        while self._waiting:
            user, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(user)  # their next waiter comes after everyone else's
            else:
                del self._waiting[user]
            if not future.done():
                future.set_result(None)  # the slot moves to it: ``busy`` is unchanged
                return
        self.busy -= 1

    def close(self) -> None:
        """Stop: every waiter and every later :meth:`acquire` raise
        :class:`SlotsClosed`; slots held stay held until given back."""
        self.closed = True
        waiters = [future for queue in self._waiting.values() for future in queue]
        self._waiting.clear()
        for future in waiters:
            if not future.done():
                future.set_exception(SlotsClosed("the worker is stopping"))

    async def pass_on(self, user: str) -> None:
        """Between two turns of one drain: if others wait, let the next in
        turn have this slot and queue for another; once closed, raise
        :class:`SlotsClosed` (the turn that just ended was the last)."""
        if self.closed:
            raise SlotsClosed("the worker is stopping")
        if self._waiting:
            self.release()
            await self.acquire(user)

    def _forget(self, user: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(user)
        if queue is None:
            return
        try:
            queue.remove(future)
        except ValueError:
            return
        if not queue:
            del self._waiting[user]


class Slot:
    """One drain's claim on a slot of :class:`FairSlots`: held or not, so it
    is given back exactly once whatever interrupts the drain."""

    def __init__(self, slots: FairSlots, user: str):
        self.slots = slots
        self.user = user
        self.held = False

    async def take(self) -> None:
        await self.slots.acquire(self.user)  # cancelled: nothing is held
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()

    async def pass_on(self) -> None:
        """Between two turns: if anyone waits, the next in turn runs first;
        once the slots are closed, raise :class:`SlotsClosed`."""
        if self.slots.closed:
            raise SlotsClosed("the worker is stopping")
        if self.held and self.slots.contended():
            self.give_back()
            await self.take()
