"""Where ``regenerate`` and ``edit`` fork a conversation (LangGraph time travel).

A conversation's LangGraph thread is a chain of checkpoints, one per turn
(``durability="exit"``; an interrupted turn may add one), each naming its
parent. Replacing a message means running a turn on the state *before* it: the
newest checkpoint of the chain that does not hold the message yet. The turn
then forks there -- its checkpoint's parent is that one -- and the thread's
latest pointer moves to the new branch, so ``history`` shows it alone.

The rules are plain functions (:func:`locate`, :func:`holds`); :func:`fork_base`
walks the chain with the library's saver, a checkpoint at a time, back at most
:data:`MAX_STEPS` checkpoints. Checkpoints beyond ``CHECKPOINT_KEEP`` are
pruned, so a message older than that cannot be edited (``too_old``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from switchboard.shared.checkpoints import client_msg_id
from switchboard.shared.protocol import ErrorCode, FrameError

#: Checkpoints :func:`fork_base` reads back at most (above CHECKPOINT_KEEP's useful range).
MAX_STEPS = 200


@dataclass(frozen=True)
class Target:
    """The user message a fork replaces (an edit) or answers again (a regenerate)."""

    id: str  #: its message id
    text: str


def _text(message: Any) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def locate(messages: Sequence[Any], cmid: str, *, last: bool) -> Target:
    """The user message ``cmid`` among ``messages`` (a state's); with
    ``last``, it must be the newest user message. :class:`FrameError`
    ``unknown_message`` / ``not_last`` otherwise."""
    humans = [m for m in messages if getattr(m, "type", "") == "human"]
    found = next((m for m in reversed(humans) if client_msg_id(m) == cmid), None)
    if found is None or getattr(found, "id", None) is None:
        raise FrameError(ErrorCode.UNKNOWN_MESSAGE, f"no message {cmid!r} in this conversation's state", cmid)
    if last and found is not humans[-1]:
        raise FrameError(ErrorCode.NOT_LAST, f"{cmid!r} is not the conversation's last message: only the last "
                         f"reply can be regenerated (edit an earlier message instead)", cmid)
    return Target(found.id, _text(found))


def holds(messages: Sequence[Any], message_id: str) -> bool:
    return any(getattr(m, "id", None) == message_id for m in messages)


def _messages(found: Any) -> list:
    return found.checkpoint.get("channel_values", {}).get("messages", []) or []


async def fork_base(saver: Any, latest: Any, message_id: str, cmid: str) -> str:
    """The id of the newest checkpoint before message ``message_id`` entered
    the chain that ends at ``latest`` (a checkpoint tuple); '' when it is the
    conversation's first (the fork starts from the empty state).
    :class:`FrameError` ``too_old`` when the chain is cut (pruned, expired)
    or longer than :data:`MAX_STEPS` before it."""
    found = latest
    for _ in range(MAX_STEPS):
        if not holds(_messages(found), message_id):
            return found.config["configurable"]["checkpoint_id"]
        if found.parent_config is None:
            return ""
        found = await saver.aget_tuple(found.parent_config)
        if found is None:
            break
    raise FrameError(ErrorCode.TOO_OLD, f"{cmid!r} is older than the checkpoints kept (CHECKPOINT_KEEP): "
                     f"it cannot be edited", cmid)
