"""A stopped graph run ends at once, even when code under it swallows a
cancellation (a cancel landing while a library call cleans up)."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.worker.stopping import Stopped, stoppable


async def _stubborn(swallow: int) -> str:
    for _ in range(swallow + 1):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1
    return "finished"


@pytest.mark.parametrize("swallowed", [0, 1, 3])
async def test_a_stop_ends_the_run_within_moments_even_if_cancels_are_swallowed(swallowed):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, stop.set)
    started = loop.time()
    with pytest.raises(Stopped):
        await stoppable(_stubborn(swallowed), stop, timeout=60)
    assert loop.time() - started < 1.0


async def test_a_run_that_finishes_returns_and_one_too_long_times_out():
    assert await stoppable(asyncio.sleep(0.01, result="done"), asyncio.Event(), timeout=5) == "done"
    with pytest.raises(TimeoutError):
        await stoppable(_stubborn(1), asyncio.Event(), timeout=0.1)
