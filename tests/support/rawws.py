"""A WebSocket client that does only what it is told: the tests' misbehaving device.

The handshake and the parsing of the server's frames are websockets'
sans-I/O :class:`ClientProtocol`, over a plain non-blocking socket; the
client reads the socket only when asked to and writes nothing but what it is
given. So it can stop reading (a small ``rcvbuf`` makes the server's writes
block soon), leave pings unanswered (``answer_pings=False``: a ping is
answered only when the client writes again), half-send a fragmented message,
or write bytes made by hand (:meth:`send_bytes`; the fuzzer's frames, a
compressed fragment). ``deflate=True`` offers permessage-deflate, as a
browser does.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from .cluster import token


class RawClient:
    def __init__(self, url: str, *, rcvbuf: int | None = None, deflate: bool = False,
                 answer_pings: bool = False):
        self.url = url
        self.rcvbuf = rcvbuf
        self.answer_pings = answer_pings
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.protocol = ClientProtocol(parse_uri(url), max_size=None, extensions=extensions)
        self.sock: socket.socket | None = None
        self.frames: list[dict[str, Any]] = []  #: JSON text frames received (see :meth:`forget_read`)
        self.pings = 0  #: ping frames received
        self.eof = False  #: the TCP connection ended
        self._read_at = 0  #: frames already handed out by :meth:`recv_json`

    async def open(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        uri = parse_uri(self.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            # Set before connecting: the window offered to the server is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
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

    # -- writing -------------------------------------------------------------------------

    async def send_text(self, data: bytes, *, fin: bool = True) -> None:
        self.protocol.send_text(data, fin=fin)
        await self._flush()

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send_text(json.dumps(frame).encode())

    async def send_bytes(self, data: bytes) -> None:
        """Write bytes as they are (frames made beforehand); a server that
        already closed is not an error here (what it answered is read next)."""
        assert self.sock is not None
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
        except OSError:
            pass

    async def hello(self, user: str, device: str, **fields: Any) -> dict[str, Any]:
        """Send ``hello`` with a token for ``user``; the first frame of the answer."""
        await self.send_json({"type": "hello", "token": token(user), "device_id": device, **fields})
        return await self.recv_json()

    # -- reading -------------------------------------------------------------------------

    async def recv_json(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next text frame not handed out yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._read_at >= len(self.frames):
            if self.closed:
                raise ConnectionError(f"closed with {self.close_code} before the next frame")
            await self._receive(deadline - loop.time())
        self._read_at += 1
        return self.frames[self._read_at - 1]

    def unread(self) -> bool:
        return self._read_at < len(self.frames)

    def forget_read(self) -> None:
        """Drop the frames already handed out (a long-lived client stays small)."""
        del self.frames[:self._read_at]
        self._read_at = 0

    async def read_until_closed(self, timeout: float) -> int | None:
        """Read everything until the connection ends; the close code received
        (None: it ended without one). TimeoutError if it does not end in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            await self._receive(deadline - loop.time())
        return self.close_code

    @property
    def closed(self) -> bool:
        return self.eof or self.protocol.state is State.CLOSED or self.protocol.close_rcvd is not None

    @property
    def close_code(self) -> int | None:
        return self.protocol.close_rcvd.code if self.protocol.close_rcvd is not None else None

    @property
    def close_reason(self) -> str | None:
        return self.protocol.close_rcvd.reason if self.protocol.close_rcvd is not None else None

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "event"]

    async def _receive(self, timeout: float) -> None:
        assert self.sock is not None
        if timeout <= 0:
            raise TimeoutError("nothing more arrived in time")
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
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.frames.append(json.loads(event.data))
                elif event.opcode is Opcode.PING:
                    self.pings += 1
        if self.answer_pings or self.protocol.close_rcvd is not None:
            # Pongs (queued by the protocol), and the closing handshake.
            await self._flush()

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
