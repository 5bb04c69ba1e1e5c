"""``history``: a conversation's messages, read from its LangGraph checkpoint.

The gateway reads the newest checkpoint of the conversation's thread with the
same saver the workers write with (langgraph-checkpoint-redis); it never runs
the graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from langgraph.checkpoint.redis.aio import AsyncRedisSaver

from switchboard.shared import keys
from switchboard.shared.checkpoints import client_msg_id
from switchboard.shared.protocol import HistoryMessage

_ROLES = {"human": "user", "ai": "assistant"}


def to_history(messages: Iterable[Any], limit: int) -> list[HistoryMessage]:
    """Keep user and assistant text messages, newest last, at most ``limit``."""
    return history_page(messages, limit)[0]


def history_page(messages: Iterable[Any], limit: int, before: str | None = None) -> tuple[list[HistoryMessage], bool]:
    """The ``limit`` user and assistant messages before the one whose id is
    ``before`` (None: the newest), newest last; and whether older ones
    exist. An id not among them gives the newest page."""
    out: list[HistoryMessage] = []
    for message in messages:
        role = _ROLES.get(getattr(message, "type", ""))
        if role is None:
            continue
        content = message.content
        if not isinstance(content, str):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if role == "assistant" and not content:
            continue  # a model's request for tools, without text
        out.append(HistoryMessage(role=role, text=content, id=getattr(message, "id", None),
                                  client_msg_id=client_msg_id(message) if role == "user" else None))
    if before is not None:
        end = next((i for i, m in enumerate(out) if m.id == before), len(out))
        out = out[:end]
    return out[-limit:], len(out) > limit


class HistoryReader:
    def __init__(self, saver: AsyncRedisSaver):
        self.saver = saver

    async def read(self, user: str, conversation_id: str, limit: int) -> list[HistoryMessage] | None:
        """Return the messages, or None if the conversation has no checkpoint."""
        page = await self.page(user, conversation_id, limit)
        return None if page is None else page[0]

    async def latest(self, user: str, conversation_id: str, generation: int = 0) -> Any:
        """The newest checkpoint tuple of the conversation's thread in ``generation``, or None."""
        return await self.saver.aget_tuple({"configurable": {
            "thread_id": keys.thread_id(user, conversation_id, generation), "checkpoint_ns": ""}})

    async def page(self, user: str, conversation_id: str, limit: int, before: str | None = None,
                   generation: int = 0) -> tuple[list[HistoryMessage], bool] | None:
        """:func:`history_page` of the newest checkpoint of the conversation's
        thread in ``generation`` (how many times it was cleared), or None if it has none."""
        found = await self.latest(user, conversation_id, generation)
        if found is None:
            return None
        messages = found.checkpoint.get("channel_values", {}).get("messages", [])
        return history_page(messages, limit, before)
