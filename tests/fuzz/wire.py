"""A WebSocket client that puts any frame on the wire, and reads the answers.

The handshake and the parsing of the server's frames are the tests' raw
client's (:mod:`tests.support.rawws`); the frames sent are written here byte by
byte (RFC 6455 section 5.2), so they can break every rule a library enforces:
reserved bits, reserved opcodes, invalid UTF-8 in a text frame, a header
announcing more bytes than follow. The mask key is zero (a valid key, RFC
6455 section 5.3), so large payloads cost no masking.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass, field

from websockets.frames import Opcode

from tests.support.rawws import RawClient

from .generators import Wire


def encode(frame: Wire) -> bytes:
    """The bytes of one masked client frame."""
    length = frame.declared if frame.declared is not None else len(frame.data)
    head = bytes([(0x80 if frame.fin else 0) | (frame.rsv & 7) << 4 | frame.opcode & 0xF])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    return head + b"\0\0\0\0" + frame.data


@dataclass
class Answers:
    """What the server sent after an input, up to the marker or the close."""

    frames: list[dict] = field(default_factory=list)  #: JSON text frames (events left out)
    close_code: int | None = None
    closed: bool = False  #: a close frame came, or the TCP connection ended
    timed_out: bool = False


class FuzzClient(RawClient):
    """A raw client that answers the server's pings (a fuzz run is long) and
    writes :class:`Wire` frames exactly as generated."""

    def __init__(self, url: str):
        super().__init__(url, answer_pings=True)

    async def send(self, frames: tuple[Wire, ...] | list[Wire]) -> None:
        await self.send_bytes(b"".join(encode(f) for f in frames))

    async def send_json(self, obj: dict) -> None:
        await self.send([Wire(Opcode.TEXT.value, json.dumps(obj).encode())])

    async def hello(self, token: str, device: str, timeout: float) -> dict:  # type: ignore[override]
        """Send ``hello`` with ``token``; return the first frame of the answer."""
        await self.send_json({"type": "hello", "token": token, "device_id": device})
        try:
            return await self.recv_json(timeout)
        finally:
            self.forget_read()

    async def answers(self, *, marker: str | None, timeout: float) -> Answers:
        """Read until the ``error`` frame echoing ``marker`` (as its
        ``client_msg_id``) or the end of the connection, at most ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out = Answers()
        try:
            while True:
                while self.unread():
                    frame = await self.recv_json()
                    if marker is not None and frame.get("type") == "error" and frame.get("client_msg_id") == marker:
                        return out
                    if frame.get("type") != "event":
                        out.frames.append(frame)
                if self.closed:
                    out.closed, out.close_code = True, self.close_code
                    return out
                try:
                    await self._receive(deadline - loop.time())
                except TimeoutError:
                    out.timed_out = True
                    return out
        finally:
            self.forget_read()
