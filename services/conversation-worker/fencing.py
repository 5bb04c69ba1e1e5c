"""The worker's checkpointer: written only by the conversation's lease holder,
and read from memory while that holder keeps the conversation.

*Fencing.* A worker that stalls past its lease (a long GC pause, a frozen VM)
may wake up in the middle of a turn that another worker has since run. Its
reply is refused by the commit script; this saver refuses its checkpoint too,
so the conversation's LangGraph state does not fork. The turn's config carries
the fence (``configurable["switchboard_fence"]``: lease key, token and the
conversation's hash); every checkpoint write first checks, in one Lua call,
that the lease still holds the token -- and records the new checkpoint's id in
the conversation hash (``ckpt``). The check and the library's write are
separate calls, so a lease lost in between can still let one write through;
the lease TTL (seconds) dwarfs that window, and the reply stays fenced
atomically either way.

*The newest checkpoint, kept.* Loading a thread's newest checkpoint from
Redis costs a lookup plus decoding every message of the conversation -- the
cost that grows with each turn. While a worker holds a conversation's lease it
is the only writer, so the checkpoint it wrote last *is* the newest one. The
saver keeps it (a bounded LRU of ``CHECKPOINT_CACHE`` conversations) and
serves the next turn's read from memory, provided the conversation hash still
names it: :meth:`FencedRedisSaver.validate` compares ``ckpt`` when the worker
takes the lease, so a turn run meanwhile by another worker (a hand-over, a
failover) is never hidden by a stale copy. Anything unusual -- a failed write,
pending writes (interrupts), a lost lease -- drops the kept copy, and the
library reads Redis as before.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, copy_checkpoint
from langgraph.checkpoint.redis.aio import AsyncRedisSaver

from switchboard.shared.checkpoints import use_caching_serializer

from .lease import LeaseLost

log = logging.getLogger(__name__)

FENCE = "switchboard_fence"

# KEYS: lease, conv   ARGV: token, new checkpoint id ('' for a writes-only call)
_FENCE = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'ckpt', ARGV[2]) end
return 1
"""


def fence_config(lease_key: str, token: str, conversation_key: str) -> dict[str, Any]:
    return {FENCE: (lease_key, token, conversation_key)}


def _fence(config: RunnableConfig) -> tuple[str, str, str] | None:
    return (config.get("configurable") or {}).get(FENCE)


def _is_root(config: RunnableConfig) -> bool:
    """The graph's own checkpoint (not a subgraph's namespace)."""
    return not (config.get("configurable") or {}).get("checkpoint_ns")


class FencedRedisSaver(AsyncRedisSaver):
    def __init__(self, *args: Any, cache_size: int = 1000, **kwargs: Any):
        super().__init__(*args, **kwargs)
        use_caching_serializer(self, remember_encodings=cache_size > 0)
        self.cache_size = cache_size
        self._newest: OrderedDict[str, CheckpointTuple] = OrderedDict()
        self._fence_script = self._redis.register_script(_FENCE)
        self.hits = 0  #: reads served from memory (tests, metrics)

    # -- the kept copy ----------------------------------------------------------------

    def validate(self, thread_id: str, newest_id: str | None) -> None:
        """Keep the copy of ``thread_id`` only if Redis names it the newest."""
        kept = self._newest.get(thread_id)
        if kept is not None and kept.checkpoint["id"] != newest_id:
            del self._newest[thread_id]

    def forget(self, thread_id: str) -> None:
        self._newest.pop(thread_id, None)

    def _keep(self, thread_id: str, kept: CheckpointTuple) -> None:
        if self.cache_size <= 0:
            return
        self._newest[thread_id] = kept
        self._newest.move_to_end(thread_id)
        while len(self._newest) > self.cache_size:
            self._newest.popitem(last=False)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config.get("configurable") or {}
        if _fence(config) and _is_root(config) and not configurable.get("checkpoint_id"):
            kept = self._newest.get(configurable["thread_id"])
            if kept is not None:
                self._newest.move_to_end(configurable["thread_id"])
                self.hits += 1
                return kept._replace(checkpoint=copy_checkpoint(kept.checkpoint))
        return await super().aget_tuple(config)

    # -- fenced writes ----------------------------------------------------------------

    async def _check_fence(self, config: RunnableConfig, new_id: str) -> None:
        fence = _fence(config)
        if not fence:
            return
        lease_key, token, conversation_key = fence
        if not await self._fence_script(keys=[lease_key, conversation_key], args=[token, new_id]):
            log.warning("refused checkpoint write for %s: the lease is no longer ours", lease_key)
            raise LeaseLost(f"checkpoint write refused: lease {lease_key} lost")

    async def aput(self, config, checkpoint, metadata, new_versions):  # noqa: ANN001 - LangGraph's signature
        thread_id = config["configurable"]["thread_id"]
        root = _is_root(config)
        self.forget(thread_id)
        await self._check_fence(config, checkpoint["id"] if root else "")
        saved = await super().aput(config, checkpoint, metadata, new_versions)
        if root and _fence(config):
            parent_id = config["configurable"].get("checkpoint_id")
            parent = ({"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": parent_id}}
                      if parent_id else None)
            kept = copy_checkpoint(checkpoint)
            self._keep(thread_id, CheckpointTuple(
                config={"configurable": {"thread_id": thread_id, "checkpoint_ns": "",
                                         "checkpoint_id": checkpoint["id"]}},
                checkpoint=kept, metadata=dict(metadata), parent_config=parent, pending_writes=[]))
        return saved

    async def aput_writes(self, config, writes, task_id, task_path=""):  # noqa: ANN001
        # Pending writes (an interrupt, a failed step) belong to the stored
        # checkpoint: the next read must see them, so it goes to Redis.
        self.forget(config["configurable"]["thread_id"])
        await self._check_fence(config, "")
        return await super().aput_writes(config, writes, task_id, task_path)
