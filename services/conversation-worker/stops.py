"""Which graph run a cancel notice stops: the worker's register of the entry
each conversation runs now, and of notices that came before their entry did.

A cancel notice (``{u:U}:cancels``, heard by every worker) names a
conversation and the last entry it stops (``up_to``). The commit script
decides what a cancelled entry's event is, whether or not its run was
stopped; stopping the run here is only a nudge that saves the rest of the
turn. A notice can reach this process *before* the answer of the ``begin``
that takes its entry -- the begin ran before the cancel's mark in Redis, but
the two come on different connections -- so a notice that finds nothing
running is kept for a moment (:data:`EARLY_CANCEL_S`, at most
:data:`EARLY_CANCEL_MAX` of them: every worker hears every notice), and an
entry that starts running in that moment is stopped at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from switchboard.shared import streamids

#: Seconds a cancel notice that found nothing running is kept, and how many.
EARLY_CANCEL_S = 5.0
EARLY_CANCEL_MAX = 10_000

Conversation = tuple[str, str]  #: (user, conversation)


class Stops:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 early_s: float = EARLY_CANCEL_S, early_max: int = EARLY_CANCEL_MAX) -> None:
        self._clock = clock
        self._early_s = early_s
        self._early_max = early_max
        #: conversation -> (the entry whose graph runs now, set to stop it); at most one per drain
        self._running: dict[Conversation, tuple[str, asyncio.Event]] = {}
        #: conversation -> (up to, when): notices that found nothing running, oldest first
        self._early: OrderedDict[Conversation, tuple[str, float]] = OrderedDict()

    def cancel(self, conversation: Conversation, up_to: str) -> bool:
        """A cancel notice: stop the run of ``conversation`` if it runs an
        entry at or before ``up_to``. True if one was stopped."""
        running = self._running.get(conversation)
        if running is None:
            self._keep_early(conversation, up_to)
            return False
        if streamids.later(running[0], up_to):
            return False
        running[1].set()
        return True

    def watch(self, conversation: Conversation, entry_id: str) -> asyncio.Event:
        """Register the entry about to run: :meth:`cancel` sets the event
        returned. Set at once if a notice that covers it came just before."""
        stop = asyncio.Event()
        self._running[conversation] = (entry_id, stop)
        early = self._early.pop(conversation, None)
        if early is not None and early[1] >= self._clock() - self._early_s \
                and not streamids.later(entry_id, early[0]):
            stop.set()
        return stop

    def unwatch(self, conversation: Conversation, entry_id: str) -> None:
        """The run of ``entry_id`` ended (a later entry's registration stays)."""
        if self._running.get(conversation, (None,))[0] == entry_id:
            del self._running[conversation]

    def _keep_early(self, conversation: Conversation, up_to: str) -> None:
        now = self._clock()
        self._early.pop(conversation, None)
        self._early[conversation] = (up_to, now)
        while self._early and (len(self._early) > self._early_max
                               or next(iter(self._early.values()))[1] < now - self._early_s):
            self._early.popitem(last=False)

    def __len__(self) -> int:
        """Notices kept early (bounded by ``early_max``)."""
        return len(self._early)
