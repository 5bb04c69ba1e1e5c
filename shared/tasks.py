"""Stopping background tasks within a bound.

Long-running loops here watch a ``stop`` event and end on their own within
one poll interval; cancellation is the fallback. It is only a fallback because
a task cancelled in the middle of a Redis read (redis-py's pub/sub in
particular) can miss the cancellation and wait on its socket for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def finish(tasks: Iterable[asyncio.Task], *, grace: float, cancel_wait: float = 2.0) -> None:
    """Wait up to ``grace`` s for ``tasks`` to end, then cancel the rest and
    wait up to ``cancel_wait`` s more; log (and abandon) any that still run."""
    pending = {t for t in tasks if not t.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=cancel_wait)
    for task in pending:
        log.error("task %s did not stop; abandoning it", task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Sleep up to ``timeout`` seconds, waking early when ``event`` is set;
    return whether it is set. The interruptible sleep of every loop here."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
    return event.is_set()
