"""Streamed replies, assembled by the protocol's delta rule (docs/protocol.md,
"Streamed replies: delta"): ``seq`` 0 starts the reply afresh, ``seq`` n
appends, the final ``assistant`` / ``turn_error`` / ``cancelled`` event
replaces the lot. Pure: events in, :class:`Reply` snapshots out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from switchboard.shared.protocol import Event

STREAMED = frozenset({"delta", "tool_call", "tool_result"})
FINAL = frozenset({"assistant", "turn_error", "cancelled"})

#: Replies being written kept at once (the oldest is forgotten beyond it).
MAX_OPEN_REPLIES = 256
#: Characters kept of one reply being written (a final event's text is always whole).
MAX_REPLY_CHARS = 1_000_000


@dataclass(frozen=True)
class Reply:
    conversation_id: str
    client_msg_id: str
    text: str  #: what to show now
    appended: str  #: what this event added at the end of the previous ``text`` ("" when ``restarted``)
    restarted: bool  #: ``text`` does not continue what was shown: show it afresh
    final: bool  #: the reply is complete (``kind`` says how it ended)
    kind: str  #: the event's kind


class Replies:
    """The replies being written, per ``(conversation_id, client_msg_id)``."""

    def __init__(self, max_open: int = MAX_OPEN_REPLIES, max_chars: int = MAX_REPLY_CHARS):
        self._open: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._max_open = max_open
        self._max_chars = max_chars

    def apply(self, event: Event) -> Reply | None:
        """The reply ``event`` updates, or None for an event that is not part of one."""
        if event.client_msg_id is None or event.kind not in STREAMED | FINAL:
            return None
        key = (event.conversation_id, event.client_msg_id)
        shown = self._open.get(key)
        if event.kind in FINAL:
            self._open.pop(key, None)
            continued = shown is not None and event.text.startswith(shown)
            return Reply(*key, text=event.text, appended=event.text[len(shown):] if continued else "",
                         restarted=not continued, final=True, kind=event.kind)
        # A tool call or result shares the reply's numbering and adds no text of its own.
        piece = event.text if event.kind == "delta" else ""
        if shown is None:  # the start, or the middle of a reply this client began reading late
            text, appended, restarted = piece, piece, False
        elif event.seq == 0:  # a retried attempt starts again
            text, appended, restarted = piece, "", True
        else:
            text, appended, restarted = shown + piece, piece, False
        self._open[key] = text[: self._max_chars]
        self._open.move_to_end(key)
        while len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return Reply(*key, text=text, appended=appended, restarted=restarted, final=False, kind=event.kind)

    def text(self, conversation_id: str, client_msg_id: str) -> str | None:
        """The text of a reply still being written, or None."""
        return self._open.get((conversation_id, client_msg_id))
