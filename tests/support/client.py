"""A WebSocket client that follows docs/protocol.md, for tests (and benchmarks).

It records every frame it receives, so tests can compare what devices saw.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


def new_user() -> str:
    """A user id no other test uses (tests share one Redis)."""
    return f"user-{uuid.uuid4().hex[:8]}"


class Device:
    def __init__(self, url: str, token: str, device_id: str, *, ssl: Any = None):
        self.url = url
        self.ssl = ssl  #: an ssl.SSLContext for wss:// URLs (None: the default)
        self.token = token
        self.device_id = device_id
        self.ws: ClientConnection | None = None
        self.welcome: dict[str, Any] | None = None
        self.frames: list[dict[str, Any]] = []  # everything after welcome, this connection
        self.events: list[dict[str, Any]] = []  # every event, across connections
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self.close_code: int | None = None

    # -- connection ------------------------------------------------------------

    async def connect(self, *, last_id: str | None = None, epoch: str | None = None,
                      url: str | None = None, **hello: Any) -> dict[str, Any]:
        self.url = url or self.url
        self.ws = await connect(self.url, max_size=None, **({"ssl": self.ssl} if self.ssl is not None else {}))
        self.frames = []
        self.close_code = None
        frame = {"type": "hello", "token": self.token, "device_id": self.device_id,
                 "last_id": last_id, "epoch": epoch, **hello}
        await self.ws.send(json.dumps(frame))
        first = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if first["type"] != "welcome":
            raise AssertionError(f"expected welcome, got {first}")
        self.welcome = first
        self._reader = asyncio.create_task(self._read())
        return first

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                frame = json.loads(data)
                self.frames.append(frame)
                if frame["type"] == "event":
                    self.events.append(frame)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self._changed.set()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader

    async def drop(self) -> None:
        """Vanish without a close frame, like a phone losing its network."""
        if self.ws is not None:
            self.ws.transport.abort()
        if self._reader is not None:
            await self._reader

    # -- frames -------------------------------------------------------------------

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    async def send(self, conversation_id: str, client_msg_id: str, text: str, **fields: Any) -> None:
        await self.send_raw(json.dumps({"type": "send", "conversation_id": conversation_id,
                                        "client_msg_id": client_msg_id, "text": text, **fields}))

    async def ack(self, entry_id: str) -> None:
        await self.send_raw(json.dumps({"type": "ack", "id": entry_id}))

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = repr(self.frames[-10:])
                if len(recent) > 3000:  # frames of large messages: the shape is enough
                    recent = recent[:1500] + " ... " + recent[-1500:]
                raise AssertionError(f"{self.device_id}: condition not met in {timeout} s; frames={recent}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_frame(self, type_: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for frame in self.frames:
                if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
                    return frame
            return None

        return await self.wait_for(find, timeout)

    def replies(self, client_msg_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] in ("assistant", "turn_error", "cancelled")
                and e["client_msg_id"] == client_msg_id]

    async def wait_reply(self, client_msg_id: str, timeout: float = 20.0) -> dict[str, Any]:
        found = await self.wait_for(lambda: self.replies(client_msg_id), timeout)
        return found[0]

    def event_ids(self) -> list[str]:
        return [e["id"] for e in self.events]
