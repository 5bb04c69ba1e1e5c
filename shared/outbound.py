"""The outbound stream of a user: how events are appended, trimmed and read.

Every append goes through one Lua function so that, atomically in the user's
slot, the stream's *life* (epoch) exists, the event is appended, the stream is
trimmed to its retention while the newest trimmed id is recorded (so a resume
can tell "nothing missing" from "events were trimmed"), and the fanout tier is
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

from .protocol import Event

# Redis Lua: shared by every script that appends to an outbound stream.
APPEND_LUA = r"""
local function ensure_life(out, meta, new_epoch)
  if redis.call('EXISTS', out) == 0 then
    -- XGROUP CREATE MKSTREAM creates an empty stream: the life starts now.
    redis.call('XGROUP', 'CREATE', out, 'sb-life', '$', 'MKSTREAM')
    redis.call('HSET', meta, 'epoch', new_epoch, 'trimmed', '0-0')
    return new_epoch
  end
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    -- The stream survived its metadata: start a new life, and count every
    -- retained entry as possibly preceded by lost ones.
    local first = redis.call('XRANGE', out, '-', '+', 'COUNT', 1)
    local trimmed = '0-0'
    if #first > 0 then trimmed = first[1][1] end
    redis.call('HSET', meta, 'epoch', new_epoch, 'trimmed', trimmed)
    epoch = new_epoch
  end
  return epoch
end

local function append_event(out, meta, channel, new_epoch, maxlen, fields)
  local epoch = ensure_life(out, meta, new_epoch)
  local newest = redis.call('XREVRANGE', out, '+', '-', 'COUNT', 1)
  local prev = '0-0'
  if #newest > 0 then prev = newest[1][1] end
  local id = redis.call('XADD', out, '*', unpack(fields))
  local len = redis.call('XLEN', out)
  -- Trim in batches of maxlen/16 to amortise; remember the newest trimmed id.
  if len > maxlen + math.floor(maxlen / 16) then
    local old = redis.call('XRANGE', out, '-', '+', 'COUNT', len - maxlen)
    redis.call('HSET', meta, 'trimmed', old[#old][1])
    redis.call('XTRIM', out, 'MAXLEN', maxlen)
  end
  redis.call('PUBLISH', channel, cmsgpack.pack({prev, id, fields}))
  return {id, epoch}
end
"""

ENSURE_LIFE_LUA = APPEND_LUA + r"""
-- KEYS: out, meta   ARGV: new_epoch
return ensure_life(KEYS[1], KEYS[2], ARGV[1])
"""


class Notice(msgspec.Struct, array_like=True):
    """What an append publishes on the user's notify channel."""

    prev: str  #: the stream's newest entry before this one ('0-0': none)
    id: str
    fields: list[str]  #: the entry's fields, flat

    def event(self) -> Event:
        return flat_entry_to_event(self.id, self.fields)


_notice_decoder = msgspec.msgpack.Decoder(Notice)


def parse_notice(data: bytes) -> Notice | None:
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
        "kind", kind,
        "conv", conversation_id,
        "text", text,
        "cmid", client_msg_id or "",
        "dev", device_id or "",
        "ts", str(ts),
        "in", inbound_id,
    ]
    if seq is not None:
        fields += ["seq", str(seq)]
    return fields


def entry_to_event(entry_id: str, fields: dict[str, str]) -> Event:
    """Turn a raw outbound stream entry into the wire ``event`` frame."""
    return Event(
        id=entry_id,
        conversation_id=fields.get("conv", ""),
        kind=fields.get("kind", ""),
        text=fields.get("text", ""),
        client_msg_id=fields.get("cmid") or None,
        device_id=fields.get("dev") or None,
        ts=int(fields.get("ts") or 0),
        seq=int(seq) if (seq := fields.get("seq")) else None,
    )


def flat_entry_to_event(entry_id: str, flat: list[str]) -> Event:
    """:func:`entry_to_event` of fields as Redis returns them inside Lua
    (and packs them): ``[field, value, field, value, ...]``."""
    pairs = iter(flat)
    return entry_to_event(entry_id, dict(zip(pairs, pairs)))
