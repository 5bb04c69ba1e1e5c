"""A graph run that a cancel can stop and a timeout can end: the run is
cancelled, and given :data:`WORK_EXIT_GRACE` seconds to unwind."""

from __future__ import annotations

import asyncio
from typing import Any

#: Seconds a cancelled drain's graph run gets to end before its output is dropped.
WORK_EXIT_GRACE = 5.0


async def cancel(task: asyncio.Future, *, grace: float) -> None:
    """Cancel ``task`` and wait up to ``grace`` seconds for it to end. The
    cancellation is repeated every tenth of a second: code under the graph
    can swallow one (a cancel landing while a library call cleans up), which
    would leave the run going on to its end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait([task], timeout=min(0.1, max(0.0, deadline - loop.time())))


class Stopped(Exception):
    """The graph run was stopped by a cancel (see :func:`stoppable`)."""


async def stoppable(run: Any, stop: asyncio.Event, *, timeout: float) -> Any:
    """Await ``run`` (the graph's), at most ``timeout`` seconds (TimeoutError),
    or until ``stop`` is set: then the run is cancelled, awaited, and
    :class:`Stopped` raised."""
    task = asyncio.ensure_future(run)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([task, stopped], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        await cancel(task, grace=WORK_EXIT_GRACE)  # let it unwind (a checkpoint at exit is dropped)
        if stopped in done:
            raise Stopped
        raise TimeoutError
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()

