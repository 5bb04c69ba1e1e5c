"""The worker's checkpoint saver for tests, set up on a real Redis."""

from __future__ import annotations

from switchboard.shared.checkpoints import setup_saver
from switchboard.worker.fencing import FencedRedisSaver


async def fenced_saver(client, **kw) -> FencedRedisSaver:
    """A FencedRedisSaver on ``client`` (a bytes client) with its indexes created."""
    saver = FencedRedisSaver(redis_client=client, **kw)
    await setup_saver(saver)
    return saver
