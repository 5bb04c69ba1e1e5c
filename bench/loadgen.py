"""A lean WebSocket device for load: it speaks docs/protocol.md, records the
arrival time of every frame it cares about, and does nothing else."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import msgspec
from websockets.asyncio.client import ClientConnection, connect


class _Frame(msgspec.Struct):
    type: str
    id: str | None = None
    kind: str | None = None
    client_msg_id: str | None = None
    epoch: str | None = None
    resume_from: str | None = None
    recovered: bool | None = None


_decode = msgspec.json.Decoder(_Frame).decode


class LoadDevice:
    def __init__(self, url: str, token: str, device_id: str):
        self.url = url
        self.token = token
        self.device_id = device_id
        self.ws: ClientConnection | None = None
        self.welcome: _Frame | None = None
        self.events = 0
        self.last_id: str | None = None
        self.event_ids: list[str] | None = None  #: set to a list to record every event id
        self.replies: dict[str, float] = {}  #: client_msg_id -> monotonic arrival of its reply
        self.first_deltas: dict[str, float] = {}  #: client_msg_id -> arrival of its reply's first delta
        self.accepted: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future] = {}
        self.on_event: Callable[[_Frame, float], None] | None = None
        self._reader: asyncio.Task | None = None

    async def connect(self, *, last_id: str | None = None, epoch: str | None = None) -> _Frame:
        # A generous handshake timeout: a reconnect storm queues thousands of handshakes.
        # proxy=None: no proxy lookup in the environment for every connection.
        self.ws = await connect(self.url, max_size=None, compression=None, ping_interval=None, open_timeout=120,
                                proxy=None)
        await self.ws.send(json.dumps({"type": "hello", "token": self.token, "device_id": self.device_id,
                                       "last_id": last_id, "epoch": epoch}))
        self.welcome = _decode(await self.ws.recv())
        self._reader = asyncio.create_task(self._read())
        return self.welcome

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                now = time.monotonic()
                frame = _decode(data)
                if frame.type == "event":
                    self.events += 1
                    self.last_id = frame.id
                    if self.event_ids is not None:
                        self.event_ids.append(frame.id)
                    if frame.kind == "delta" and frame.client_msg_id not in self.first_deltas:
                        self.first_deltas[frame.client_msg_id] = now
                    elif frame.kind in ("assistant", "turn_error") and frame.client_msg_id:
                        self.replies[frame.client_msg_id] = now
                        waiter = self.waiters.pop(frame.client_msg_id, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(now)
                    if self.on_event is not None:
                        self.on_event(frame, now)
                elif frame.type == "accepted":
                    self.accepted[frame.client_msg_id] = now
        except Exception:  # noqa: BLE001 - a closed socket ends the reader
            pass

    async def send(self, conversation: str, cmid: str, text: str) -> float:
        """Send and return the send time; ``reply()`` awaits the answer."""
        self.waiters[cmid] = asyncio.get_running_loop().create_future()
        sent = time.monotonic()
        await self.ws.send(json.dumps({"type": "send", "conversation_id": conversation,
                                       "client_msg_id": cmid, "text": text}))
        return sent

    async def reply(self, cmid: str, timeout: float = 60.0) -> float:
        if cmid in self.replies:
            return self.replies[cmid]
        return await asyncio.wait_for(self.waiters[cmid], timeout)

    async def turn(self, conversation: str, cmid: str, text: str, timeout: float = 60.0) -> float:
        """One turn: seconds from send to the reply event."""
        sent = await self.send(conversation, cmid, text)
        return await self.reply(cmid, timeout) - sent

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader
