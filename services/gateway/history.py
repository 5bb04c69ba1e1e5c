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
from switchboard.shared.protocol import HistoryMessage

_ROLES = {"human": "user", "ai": "assistant"}


def to_history(messages: Iterable[Any], limit: int) -> list[HistoryMessage]:
    """Keep user and assistant text messages, newest last, at most ``limit``."""
    out: list[HistoryMessage] = []
    for message in messages:
        role = _ROLES.get(getattr(message, "type", ""))
        if role is None:
            continue
        content = message.content
        if not isinstance(content, str):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append(HistoryMessage(role=role, text=content))
    return out[-limit:]


class HistoryReader:
    def __init__(self, saver: AsyncRedisSaver):
        self.saver = saver

    async def read(self, user: str, conversation_id: str, limit: int) -> list[HistoryMessage] | None:
        """Return the messages, or None if the conversation has no checkpoint."""
        config = {"configurable": {"thread_id": keys.thread_id(user, conversation_id), "checkpoint_ns": ""}}
        found = await self.saver.aget_tuple(config)
        if found is None:
            return None
        messages = found.checkpoint.get("channel_values", {}).get("messages", [])
        return to_history(messages, limit)
