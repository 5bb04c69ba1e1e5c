"""What a turn ended with, and the rules that read it from the graph's state:
plain types and functions (fast tests in tests/worker/test_turns.py).

A user's message enters the graph as a human message with the id
:func:`message_id` of its inbound entry, so what the graph's checkpoint
holds after it -- a reply (:func:`reply_after`), or nothing yet
(:func:`holds_unanswered`) -- says how far an earlier attempt got.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from switchboard.shared.encryption import CannotOpen
from switchboard.shared.errors import SwitchboardError
from switchboard.shared.protocol import EventKind

from .deltas import content_text


class TurnCancelled(SwitchboardError):
    """The turn was stopped (``cancel``, ``if_busy: interrupt``) while it ran."""

    def __init__(self, partial: str, base: str = ""):
        super().__init__("the turn was cancelled")
        self.partial = partial  #: the reply as far as its deltas went
        self.base = base  #: the latest pointer to put back, if the run stored a checkpoint ('': none)


@dataclass(frozen=True)
class Outcome:
    """How a turn ended, for its commit: the event's kind and text; an
    interrupt's id (the turn waits for a ``resume``) and the pointer a
    cancel of the turn puts back (see commit.lua)."""

    kind: EventKind
    text: str
    interrupt_id: str = ""
    base: str = ""


@dataclass(frozen=True)
class Interrupted:
    """The graph asked the person (LangGraph's ``interrupt``): its checkpoint
    and the interrupt's pending writes are stored."""

    id: str
    value: Any
    base: str = ""  #: the latest pointer before the turn's first stored checkpoint ('-': none; '': not known)

    def event_text(self) -> str:
        return json.dumps({"id": self.id, "value": self.value}, ensure_ascii=False, default=str)


def first_interrupt(snapshot: Any) -> Any:
    """The first interrupt a state snapshot has pending, if any."""
    pending = getattr(snapshot, "interrupts", ()) or ()
    return pending[0] if pending else None


def holds_unanswered(messages: Sequence[Any], human_id: str) -> bool:
    """The human message ``human_id`` is the newest one, with no reply after it."""
    for message in reversed(messages):
        if getattr(message, "id", None) == human_id:
            return True
        if getattr(message, "type", "") in ("human", "ai"):
            return False
    return False


class TurnFailed(SwitchboardError):
    """One attempt at a turn failed in the graph (raised, or ran too long)."""

    def __init__(self, reason: str, public: str, *, permanent: bool = False):
        super().__init__(reason)
        self.reason = reason  #: for logs and the dead-letter entry
        self.public = public  #: for the user's ``turn_error`` event
        self.permanent = permanent  #: another attempt cannot succeed: dead-letter now


def unreadable_state(exc: CannotOpen) -> TurnFailed:
    return TurnFailed(f"the conversation's state cannot be decrypted: {exc}",
                      "the assistant cannot read this conversation's stored state", permanent=True)


def message_id(entry_id: str) -> str:
    return f"in-{entry_id}"


def reply_after(messages: Sequence[Any], human_id: str) -> str | None:
    """The reply already recorded for the human message ``human_id``, if any:
    the text of the AI messages that follow it, up to the next human message."""
    # From the end: the message is the newest human one, or close to it.
    for index in range(len(messages) - 1, -1, -1):
        if getattr(messages[index], "id", None) == human_id:
            texts = []
            for later in messages[index + 1:]:
                kind = getattr(later, "type", "")
                if kind == "human":
                    break
                if kind == "ai":
                    texts.append(content_text(later.content))
            return "\n".join(t for t in texts if t) if texts else None
    return None
