"""A WebSocket client that puts any frame on the wire, and reads the answers.

The handshake and the parsing of the server's frames are websockets'
sans-I/O :class:`ClientProtocol`; the frames sent are written here byte by
byte (RFC 6455 section 5.2), so they can break every rule a library enforces:
reserved bits, reserved opcodes, invalid UTF-8 in a text frame, a header
announcing more bytes than follow. The mask key is zero (a valid key, RFC
6455 section 5.3), so large payloads cost no masking.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass, field

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

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


class FuzzClient:
    def __init__(self, url: str):
        self.url = url
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sock: socket.socket | None = None
        self._pending: list[dict] = []  #: text frames received and not handed out yet
        self.close_code: int | None = None
        self.eof = False

    async def open(self, timeout: float = 10.0) -> None:
        uri = parse_uri(self.url)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.sock = sock
        await asyncio.wait_for(loop.sock_connect(sock, (uri.host, uri.port)), timeout)
        self.protocol.send_request(self.protocol.connect())
        await self._flush()
        deadline = loop.time() + timeout
        while self.protocol.state is State.CONNECTING:
            await self._receive(deadline - loop.time())
        if self.protocol.state is not State.OPEN:
            raise ConnectionError(f"handshake failed: {self.protocol.handshake_exc}")

    @property
    def closed(self) -> bool:
        return self.eof or self.protocol.close_rcvd is not None

    async def send(self, frames: tuple[Wire, ...] | list[Wire]) -> None:
        """Write the frames; a server that already closed is not an error here
        (what it answered is read next)."""
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(self.sock, b"".join(encode(f) for f in frames))
        except OSError:
            pass

    async def send_json(self, obj: dict) -> None:
        await self.send([Wire(Opcode.TEXT.value, json.dumps(obj).encode())])

    async def hello(self, token: str, device: str, timeout: float) -> dict:
        """Send ``hello``; return the first frame of the answer."""
        await self.send_json({"type": "hello", "token": token, "device_id": device})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._pending:
            if self.closed:
                raise ConnectionError(f"closed with {self.close_code} after hello")
            await self._receive(deadline - loop.time())
        return self._pending.pop(0)

    async def answers(self, *, marker: str | None, timeout: float) -> Answers:
        """Read until the ``error`` frame echoing ``marker`` (as its
        ``client_msg_id``) or the end of the connection, at most ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out = Answers()
        while True:
            while self._pending:
                frame = self._pending.pop(0)
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

    async def _receive(self, timeout: float) -> None:
        assert self.sock is not None
        if timeout <= 0:
            raise TimeoutError
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), timeout)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
            self.eof = True
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self._pending.append(json.loads(event.data))
        if self.protocol.close_rcvd is not None:
            self.close_code = self.protocol.close_rcvd.code
        await self._flush()  # pongs to the server's pings, the closing handshake

    async def _flush(self) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        for data in self.protocol.data_to_send():
            if data:
                try:
                    await loop.sock_sendall(self.sock, data)
                except OSError:
                    return

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
