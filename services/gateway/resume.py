"""Where a (re)connecting device resumes, and whether that resume is exact.

Pure logic, no I/O: :func:`resolve` takes what the client said and what Redis
holds about the user's outbound stream and returns the ``resume_from`` id and
the ``recovered`` flag of the ``welcome`` frame. ``recovered`` is true only when
every event after the device's position is still retained in the same life of
the stream (same epoch) -- it is never true by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.shared import streamids
from switchboard.shared.streamids import ZERO


@dataclass(frozen=True)
class StreamState:
    epoch: str  #: the current life of the outbound stream
    trimmed: str  #: newest id removed by retention ("0-0": none)
    last_id: str  #: newest id ever appended in this life ("0-0": none)
    window_start: str  #: the id after which the newest REPLAY_WINDOW events lie


@dataclass(frozen=True)
class Resume:
    resume_from: str
    recovered: bool
    source: str  #: "last_id", "offset" or "new" (for logs and metrics)


def parse_offset(raw: str | None) -> tuple[str, str] | None:
    """A stored offset is ``<epoch>|<id>``; return ``(epoch, id)`` or None."""
    if not raw:
        return None
    epoch, sep, entry = raw.partition("|")
    if not sep or not streamids.is_valid(entry):
        return None
    return epoch, entry


def resolve(state: StreamState, *, last_id: str | None, epoch: str | None,
            stored: tuple[str, str] | None) -> Resume:
    """Decide ``resume_from`` and ``recovered`` for a ``hello``."""
    if last_id is not None:
        if epoch != state.epoch:
            # A position in another life of the stream says nothing about this one.
            return _new_device(state, source="last_id")
        return _from_position(state, last_id, source="last_id")
    if stored is not None:
        if stored[0] == state.epoch:
            return _from_position(state, stored[1], source="offset")
        # The device acked events of an earlier life: they are gone.
        return _new_device(state, source="offset")
    return _new_device(state, source="new")


def _from_position(state: StreamState, position: str, *, source: str) -> Resume:
    if streamids.later(position, state.last_id):
        # Newer than anything this life holds: the events the client saw were
        # lost (e.g. Redis restarted without them). Continue from the present.
        return Resume(state.last_id, False, source)
    if streamids.later(state.trimmed, position):
        # Events after the position were trimmed: replay what is retained.
        return Resume(state.trimmed, False, source)
    return Resume(position, True, source)


def _new_device(state: StreamState, *, source: str) -> Resume:
    start = state.window_start
    # The replay covers the whole life only if it starts at the beginning and
    # nothing was ever trimmed; anything less must be fetched with ``history``.
    complete = start == ZERO and state.trimmed == ZERO and source == "new"
    return Resume(start, complete, source)
