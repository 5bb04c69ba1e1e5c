"""The outbound stream of a user: how events are appended, trimmed and read.

Every append goes through one Lua function (``append_event`` in
``shared/lua/lib/outbound.lua``) so that, atomically in the user's slot, the
stream's *life* (epoch) exists, the event is appended, the stream is trimmed
to its retention while the newest trimmed id is recorded (so a resume can
tell "nothing missing" from "events were trimmed"), and the fanout tier is
notified on the user's channel. The notice carries the event itself and the
id of the entry before it (:func:`parse_notice`): a fanout whose connections
are all at that id delivers the event without reading the stream.

An epoch names one life of the stream: it is created with the stream, so a
stream lost with Redis data (or deleted) comes back with a new epoch and every
old position is reported ``recovered: false``.
"""

from __future__ import annotations

import secrets
import time

import msgspec

from .fields import EventField
from .protocol import Event

class AppendNotice(msgspec.Struct, array_like=True):
    """What an append publishes on the user's notify channel."""

    prev: str  #: the stream's newest entry before this one ('0-0': none)
    id: str
    fields: list[str]  #: the entry's fields, flat

    def event(self) -> Event:
        return flat_entry_to_event(self.id, self.fields)


_notice_decoder = msgspec.msgpack.Decoder(AppendNotice)


def parse_notice(data: bytes) -> AppendNotice | None:
    """The notice of an append, or None for anything else (a malformed or
    older-format notice still says "read this user")."""
    try:
        return _notice_decoder.decode(data)
    except msgspec.DecodeError:
        return None


def new_epoch() -> str:
    return secrets.token_hex(8)


def now_ms() -> int:
    return int(time.time() * 1000)


def event_fields(kind: str, conversation_id: str, text: str, *, client_msg_id: str | None,
                 device_id: str | None, ts: int, inbound_id: str, seq: int | None = None) -> list[str]:
    """Flat field list of an outbound entry (stream fields are strings)."""
    fields = [
        EventField.KIND, kind,
        EventField.CONV, conversation_id,
        EventField.TEXT, text,
        EventField.CMID, client_msg_id or "",
        EventField.DEV, device_id or "",
        EventField.TS, str(ts),
        EventField.IN, inbound_id,
    ]
    if seq is not None:
        fields += [EventField.SEQ, str(seq)]
    return fields


def entry_to_event(entry_id: str, fields: dict[str, str]) -> Event:
    """Turn a raw outbound stream entry into the wire ``event`` frame."""
    return Event(
        id=entry_id,
        conversation_id=fields.get(EventField.CONV, ""),
        kind=fields.get(EventField.KIND, ""),
        text=fields.get(EventField.TEXT, ""),
        client_msg_id=fields.get(EventField.CMID) or None,
        device_id=fields.get(EventField.DEV) or None,
        ts=int(fields.get(EventField.TS) or 0),
        seq=int(seq) if (seq := fields.get(EventField.SEQ)) else None,
    )


def flat_entry_to_event(entry_id: str, flat: list[str]) -> Event:
    """:func:`entry_to_event` of fields as Redis returns them inside Lua
    (and packs them): ``[field, value, field, value, ...]``."""
    pairs = iter(flat)
    return entry_to_event(entry_id, dict(zip(pairs, pairs)))
