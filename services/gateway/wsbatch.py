"""Many WebSocket text frames in one socket write: the only module that
reaches into websockets' internals.

``ServerConnection.send`` writes each message to the transport on its own,
which is one system call per frame. The gateway's writer sends everything a
connection's outbox holds (up to ``WRITE_FRAMES``, see :mod:`.server`) at
once, so :func:`send_texts` frames them all and writes them with one
``transport.write``.

Internals used, all of websockets' asyncio implementation
(``websockets.asyncio.connection.Connection``, the base of ``ServerConnection``):

- ``Connection.send_context()`` -- the async context manager ``send`` itself
  runs in (undocumented). On entry it checks that the connection is OPEN, and
  if not waits for the close and raises ``ConnectionClosed``, as ``send``
  does; on exit it writes what is left of ``data_to_send()`` (nothing, here)
  and awaits ``drain()``, the write flow control of ``send``.
- ``Connection.protocol`` -- the sans-I/O ``websockets.protocol.Protocol``
  (an undocumented attribute; the class and its methods are documented):
  ``send_text(data)`` frames one text message of already UTF-8 bytes, and
  ``data_to_send()`` hands over the bytes framed so far, as a list.
- ``Connection.transport`` -- the asyncio transport (undocumented), written to
  once with all those bytes joined.

- ``Protocol.extensions`` -- the negotiated extensions (a documented
  attribute): with none, :func:`send_texts` frames the messages itself,
  exactly as ``Frame.serialize`` does for an unmasked server frame.
- ``Protocol.close_sent``, ``close_rcvd``, ``close_rcvd_then_sent`` -- the
  close frames sent and received and which came first (documented
  attributes), read by :func:`close_code` for the closes metric.

Why joining is safe: while the connection is OPEN, ``data_to_send()`` holds
only frames -- the end-of-stream marker (``b""``) comes only after a close,
which changes the state, and nothing awaits between ``send_context``'s check
and the write. The gateway never sends fragmented messages, so no other
message can be midway through (``send``'s ``send_in_progress`` guard, which
this bypasses, exists only for those).

These are checked when this module is imported -- websockets within
:data:`SUPPORTED` and the methods present -- and for each connection by
:func:`check_connection` (``protocol`` and ``transport`` are instance
attributes): a websockets release that changed them fails with
:class:`IncompatibleWebsockets` at start or at the first connection, never
with frames silently lost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import websockets
from websockets.asyncio.connection import Connection
from websockets.protocol import Protocol, State

#: websockets releases this module was tested with: ``>= 14.0, < 18.0``.
SUPPORTED = ((14, 0), (18, 0))


class IncompatibleWebsockets(ImportError):
    """The installed websockets lacks what :func:`send_texts` relies on."""


def incompatibilities(version: str, connection: object, protocol: object) -> list[str]:
    """What makes websockets ``version`` (its ``connection`` class and
    sans-I/O ``protocol`` class) unusable here; empty when all is well."""
    problems: list[str] = []
    match = re.match(r"(\d+)\.(\d+)", version)
    low, high = SUPPORTED
    if match is None:
        problems.append(f"version {version!r} cannot be parsed")
    elif not low <= (int(match[1]), int(match[2])) < high:
        problems.append(f"version {version} is outside the tested range >={low[0]}.{low[1]},<{high[0]}.{high[1]}")
    for owner, name in ((connection, "send_context"), (protocol, "send_text"), (protocol, "data_to_send")):
        if not callable(getattr(owner, name, None)):
            problems.append(f"{_name(owner)}.{name} is missing")
    return problems


def _name(owner: object) -> str:
    return f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__name__', owner)}"


def _fail(problems: list[str]) -> IncompatibleWebsockets:
    return IncompatibleWebsockets(
        f"switchboard.gateway.wsbatch cannot batch frames with websockets {websockets.__version__}: "
        + "; ".join(problems) + " (see the docstring of switchboard.gateway.wsbatch)")


_problems = incompatibilities(websockets.__version__, Connection, Protocol)
if _problems:
    raise _fail(_problems)


def check_connection(ws: Connection) -> None:
    """Check the instance attributes :func:`send_texts` uses on a connection
    (cheap: call it once per connection); :class:`IncompatibleWebsockets` if
    one is missing."""
    missing = [f"Connection.{name} is missing" for name in ("protocol", "transport") if not hasattr(ws, name)]
    if not missing and not hasattr(ws.protocol, "extensions"):
        missing.append("Protocol.extensions is missing")
    if missing:
        raise _fail(missing)


def text_header(length: int) -> bytes:
    """The header of an unmasked, unfragmented server text frame of
    ``length`` payload bytes (RFC 6455 section 5.2): FIN + opcode 1, then the
    length in 7, 7+16 or 7+64 bits."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


async def send_texts(ws: Connection, frames: Sequence[bytes]) -> None:
    """Send each of ``frames`` (UTF-8 JSON) as one text message, in order,
    with one write to the transport, then wait for the transport's buffer to
    drain, as ``ws.send`` does; ``ConnectionClosed`` if the connection is not
    open, as ``ws.send`` raises.

    Without extensions (no permessage-deflate: the default) a server frame is
    its header and the payload as is, so the frames are built here
    (:func:`text_header`) and the payload is copied once, into the write,
    rather than three times through ``Frame.serialize``: the copies are most
    of what a large event costs per connection."""
    async with ws.send_context():
        protocol = ws.protocol
        if protocol.extensions:
            for frame in frames:
                protocol.send_text(frame)
            ws.transport.write(b"".join(protocol.data_to_send()))
            return
        parts: list[bytes] = []
        for frame in frames:
            parts.append(text_header(len(frame)))
            parts.append(frame)
        ws.transport.write(b"".join(parts))


def close_code(ws: Connection) -> int:
    """The close code that ended (or is ending) ``ws``: the gateway's when it
    closed first, else the client's; 1006 (abnormal) when the connection
    was lost without a close frame, 1000 while neither side has closed (the
    server closes with 1000 once the handler returns)."""
    protocol = ws.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    if sent is not None and not protocol.close_rcvd_then_sent:
        return sent.code
    if received is not None:
        return received.code
    return 1006 if protocol.state is State.CLOSED else 1000


def set_max_size(ws: Connection, size: int) -> None:
    """Set the largest message ``ws`` accepts from now on (bytes; larger: 1009).

    The gateway starts every connection at HELLO_MAX_SIZE and raises it to
    twice MAX_MESSAGE_SIZE once ``hello`` is accepted. Checked in
    websockets 17's ``protocol.py``: ``Protocol.parse`` reads
    ``max_message_size`` afresh before each frame and passes on
    ``max_message_size - current_size``, where ``current_size`` is the sum
    of the fragments of the message so far, as decoded (``recv_frame`` adds
    ``len(frame.data)`` after the extensions ran); ``Frame.parse`` raises
    ``PayloadTooBig`` (close 1009) on a frame header above it before reading
    the payload, and permessage-deflate's ``decode`` decompresses at most that
    many bytes (zlib ``max_length``) and raises ``PayloadTooBig`` beyond. So
    the limit bounds a fragmented message as a whole and its decompressed
    size, and a change applies from the next frame whose header has not
    arrived yet (frames a client sends before ``welcome`` meet the small
    limit). Older releases call the attribute ``max_size``."""
    protocol = ws.protocol
    for name in ("max_message_size", "max_size"):
        if hasattr(protocol, name):
            setattr(protocol, name, size)
            return
    raise _fail(["Protocol.max_message_size (or max_size, in older releases) is missing"])
