"""The worker's checkpointer: written only by the conversation's lease holder,
and read from memory while that holder keeps the conversation.

*Fencing, and one commit.* A worker that stalls past its lease (a long GC
pause, a frozen VM) may wake up in the middle of a turn that another worker
has since run. Its reply is refused by the commit script; its checkpoint must
be refused too, or the conversation's LangGraph state would fork. The turn's
config carries the fence (``configurable["switchboard_fence"]``: lease key
and token). The turn's final checkpoint (the graph's
own namespace; LangGraph writes it once, at the end, with
``durability="exit"``) is not written by :meth:`aput`: it is encoded into the
library's document and handed to the turn's commit script (:meth:`take`), which
stores it together with the reply, under the lease check, in one atomic step.
A turn is then either wholly committed -- checkpoint, reply, ``done`` -- or
not at all. Any other write of a leased turn (pending writes, a subgraph's
checkpoint, a second checkpoint) first stores what is waiting, in the same
fenced way (the ``store_checkpoint`` script), so writes reach Redis in
LangGraph's order.
The document is the library's own (``checkpoint:<thread>:<ns>:<id>`` JSON plus
the ``checkpoint_latest`` pointer), built by :mod:`.checkpoint_format` -- the
one module that knows the library's internals -- so the library reads it
back, lists it and searches it as usual.

*The newest checkpoint, kept.* Loading a thread's newest checkpoint from
Redis costs a lookup plus decoding every message of the conversation -- the
cost that grows with each turn. While a worker holds a conversation's lease it
is the only writer, so the checkpoint it wrote last *is* the newest one. The
saver keeps it (a bounded LRU of ``CHECKPOINT_CACHE`` conversations) and
serves the next turn's read from memory, provided the thread's latest
pointer still names it: :meth:`FencedRedisSaver.validate` compares the
pointer the begin script read when the worker took the lease, so a turn run
meanwhile by another worker (a hand-over, a failover), a checkpoint written
through the library by another process (an operator's ``aupdate_state``) and
an expired one (``CHECKPOINT_TTL``) are never hidden by a stale copy. Anything unusual -- a failed write,
pending writes (interrupts), a lost lease -- drops the kept copy, and the
library reads Redis as before.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, copy_checkpoint
from switchboard.shared.checkpoints import SwitchboardRedisSaver
from switchboard.shared.encryption import Keyring

from switchboard.shared import keys, scripts

from . import checkpoint_format
from .checkpoint_format import Document
from .lease import LeaseLostError
from .store import CheckpointWrite

log = logging.getLogger(__name__)

FENCE = "switchboard_fence"
#: In a turn's config: the checkpoint id the turn forks from ('': the empty state) -- ``edit``, ``regenerate``.
FORK = "switchboard_fork"


def fence_config(lease_key: str, token: str) -> dict[str, Any]:
    return {FENCE: (lease_key, token)}


def _fence(config: RunnableConfig) -> tuple[str, str] | None:
    return (config.get("configurable") or {}).get(FENCE)


def _is_root(config: RunnableConfig) -> bool:
    """The graph's own checkpoint (not a subgraph's namespace)."""
    return not (config.get("configurable") or {}).get("checkpoint_ns")


class FencedRedisSaver(SwitchboardRedisSaver):
    def __init__(self, *args: Any, cache_size: int = 256, keyring: Keyring | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # One kept message list per kept checkpoint; ``keyring`` (ENCRYPTION_KEYS)
        # seals what is stored and opens what is read.
        checkpoint_format.use_encoding_serializer(self, remember_encodings=cache_size > 0,
                                                  max_lists=max(cache_size, 1), keyring=keyring)
        self.cache_size = cache_size
        self._newest: OrderedDict[str, CheckpointTuple] = OrderedDict()
        # thread -> (fence, the turn's final checkpoint waiting for the commit script)
        self._pending: dict[str, tuple[tuple[str, str], Document]] = {}
        # thread -> (lease token, the parent of the first checkpoint a run stored
        # before its commit -- an interrupt's): what a cancel of the run puts back
        self._stored_base: dict[str, tuple[str, str | None]] = {}
        self._client = checkpoint_format.client(self)
        self._store_script = scripts.register(self._client, "store_checkpoint")["store_checkpoint"]
        self.ttl_ms = checkpoint_format.ttl_ms(self)
        self.hits = 0  #: reads served from memory (tests, metrics)

    # -- the kept copy ----------------------------------------------------------------

    def latest_key(self, thread_id: str) -> str:
        """The library's pointer to the thread's newest checkpoint document."""
        return checkpoint_format.latest_key(self, thread_id)

    def validate(self, thread_id: str, latest: str | None) -> None:
        """Keep the copy of ``thread_id`` only if the thread's latest pointer
        (read by the begin script) names its document: a checkpoint the
        library wrote meanwhile (another worker, an operator's
        ``aupdate_state``) moves the pointer, and an expired one
        (``CHECKPOINT_TTL``) removes it."""
        kept = self._newest.get(thread_id)
        if kept is not None and (latest is None or latest != checkpoint_format.checkpoint_key(
                self, thread_id, kept.checkpoint["id"])):
            del self._newest[thread_id]

    def forget(self, thread_id: str) -> None:
        """Drop what is kept of a thread: its copy, and a checkpoint waiting
        for a commit that will not happen."""
        self._newest.pop(thread_id, None)
        self._pending.pop(thread_id, None)
        self._stored_base.pop(thread_id, None)

    def run_started(self, thread_id: str) -> None:
        """A graph run on ``thread_id`` begins: forget what an earlier run stored."""
        self._stored_base.pop(thread_id, None)

    def stored_base(self, thread_id: str, token: str) -> str | None:
        """If the run under ``token`` stored a checkpoint before its commit (an
        interrupt), the latest pointer's value before it -- the key of its
        parent, or '-' when it had none; else None."""
        stored = self._stored_base.get(thread_id)
        if stored is None or stored[0] != token:
            return None
        return "-" if stored[1] is None else checkpoint_format.checkpoint_key(self, thread_id, stored[1])

    def take(self, thread_id: str, token: str) -> CheckpointWrite | None:
        """The turn's final checkpoint, for the commit script to store: only
        one written under the committing lease ``token`` (an attempt cut short
        may have left one behind)."""
        self._stored_base.pop(thread_id, None)  # its commit comes: known from here on in Redis
        waiting = self._pending.pop(thread_id, None)
        if waiting is None or waiting[0][1] != token:
            return None
        pending = waiting[1]
        return CheckpointWrite(pending.key, pending.latest_key, pending.body, self.ttl_ms,
                               keys.thread_checkpoints(thread_id))

    def _keep(self, thread_id: str, kept: CheckpointTuple) -> None:
        if self.cache_size <= 0:
            return
        self._newest[thread_id] = kept
        self._newest.move_to_end(thread_id)
        while len(self._newest) > self.cache_size:
            self._newest.popitem(last=False)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config.get("configurable") or {}
        if FORK in configurable and _is_root(config) and not configurable.get("checkpoint_id"):
            # Time travel: the turn starts from an earlier checkpoint (LangGraph then
            # makes it the new one's parent), or from nothing.
            if not configurable[FORK]:
                return None
            return await super().aget_tuple({"configurable": {**configurable, "checkpoint_id": configurable[FORK]}})
        if _fence(config) and _is_root(config) and not configurable.get("checkpoint_id"):
            kept = self._newest.get(configurable["thread_id"])
            if kept is not None:
                self._newest.move_to_end(configurable["thread_id"])
                self.hits += 1
                return kept._replace(checkpoint=copy_checkpoint(kept.checkpoint))
        return await super().aget_tuple(config)

    # -- fenced writes ----------------------------------------------------------------

    async def store_waiting(self, thread_id: str, fence: tuple[str, str] | None = None) -> None:
        """Store a waiting checkpoint now (fenced), before a later write.

        With ``fence`` (the later write's), a checkpoint another attempt left
        waiting -- one cut short, whose graph wrote it on its way out -- is
        dropped instead: a failed attempt's output is never stored."""
        waiting = self._pending.pop(thread_id, None)
        if waiting is None:
            return
        (lease_key, token), pending = waiting
        if fence is not None and fence != (lease_key, token):
            return
        stored = await self._store_script(keys=[lease_key, pending.key, pending.latest_key,
                                                keys.thread_checkpoints(thread_id)],
                                          args=[token, pending.body, self.ttl_ms])
        if not stored:
            self.forget(thread_id)
            raise LeaseLostError(f"checkpoint write refused: lease {lease_key} lost")
        if self._stored_base.get(thread_id, ("",))[0] != token:
            self._stored_base[thread_id] = (token, pending.parent_id)

    async def _check_fence(self, config: RunnableConfig) -> None:
        fence = _fence(config)
        if not fence:
            return
        lease_key, token = fence
        holder = await self._client.get(lease_key)
        if (holder.decode() if isinstance(holder, bytes) else holder) != token:
            log.warning("refused checkpoint write for %s: the lease is no longer ours", lease_key)
            raise LeaseLostError(f"checkpoint write refused: lease {lease_key} lost")

    async def aput(self, config, checkpoint, metadata, new_versions):  # noqa: ANN001 - LangGraph's signature
        thread_id = config["configurable"]["thread_id"]
        fence = _fence(config)
        await self.store_waiting(thread_id, fence)
        self._newest.pop(thread_id, None)
        if not (fence and _is_root(config)):
            await self._check_fence(config)
            return await super().aput(config, checkpoint, metadata, new_versions)
        pending = checkpoint_format.document(self, config, checkpoint, metadata)
        self._pending[thread_id] = (fence, pending)
        parent = ({"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": pending.parent_id}}
                  if pending.parent_id else None)
        saved = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": checkpoint["id"]}}
        self._keep(thread_id, CheckpointTuple(config=saved, checkpoint=copy_checkpoint(checkpoint),
                                              metadata=dict(metadata), parent_config=parent, pending_writes=[]))
        return saved

    async def aput_writes(self, config, writes, task_id, task_path=""):  # noqa: ANN001
        # Pending writes (an interrupt, a failed step) belong to a stored
        # checkpoint, and the next read must see them: it goes to Redis.
        thread_id = config["configurable"]["thread_id"]
        await self.store_waiting(thread_id, _fence(config))
        self._newest.pop(thread_id, None)
        await self._check_fence(config)
        return await super().aput_writes(config, writes, task_id, task_path)
