"""A checkpointer that only the conversation's lease holder can write through.

A worker that stalls past its lease (a long GC pause, a frozen VM) may wake
up in the middle of a turn that another worker has since run. Its reply is
refused by the commit script; this saver refuses its checkpoint too, so the
conversation's LangGraph state does not fork. The turn's config carries the
lease key and token (``configurable["switchboard_fence"]``); every checkpoint
write first checks that the lease still holds that token.

The check and the write are two Redis calls, so a lease lost in between can
still let one write through; the lease TTL (seconds) dwarfs that window
(microseconds), and the reply stays fenced atomically either way.
"""

from __future__ import annotations

import logging
from typing import Any

from langgraph.checkpoint.redis.aio import AsyncRedisSaver

from switchboard.shared.checkpoints import use_caching_serializer

from .lease import LeaseLost

log = logging.getLogger(__name__)

FENCE = "switchboard_fence"


def fence_config(lease_key: str, token: str) -> dict[str, Any]:
    return {FENCE: (lease_key, token)}


class FencedRedisSaver(AsyncRedisSaver):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        use_caching_serializer(self)

    async def _check_fence(self, config: dict[str, Any]) -> None:
        fence = config.get("configurable", {}).get(FENCE)
        if not fence:
            return
        key, token = fence
        current = await self._redis.get(key)
        if isinstance(current, bytes):
            current = current.decode()
        if current != token:
            log.warning("refused checkpoint write for %s: the lease is no longer ours", key)
            raise LeaseLost(f"checkpoint write refused: lease {key} lost")

    async def aput(self, config, checkpoint, metadata, new_versions):  # noqa: ANN001 - LangGraph's signature
        await self._check_fence(config)
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config, writes, task_id, task_path=""):  # noqa: ANN001
        await self._check_fence(config)
        return await super().aput_writes(config, writes, task_id, task_path)
