"""Simulated users and devices for the chaos run: real WebSocket clients that
follow docs/protocol.md (reconnect with back-off, resume with last_id, resend
unacknowledged sends) and record everything for the checker."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidHandshake

from .checker import DeviceLog, Segment

RESEND_AFTER = 3.0  #: seconds without `accepted` before a send is resent
#: Shares of the load: sends with ``if_busy: interrupt``, and cancels per message sent.
INTERRUPT_SHARE = 0.04
CANCEL_SHARE = 0.03
#: Shares of the messages whose turn asks the person first (human-in-the-loop),
#: and of the load's ticks that edit an earlier message.
ASK_SHARE = 0.05
EDIT_SHARE = 0.03
#: Refusals an edit may get, and then is dropped (the conversation was busy, the message gone).
EDIT_REFUSALS = ("busy", "unknown_message", "not_last", "too_old")


def answer_for(cmid: str) -> str:
    """What a chaos user answers the question of message ``cmid``."""
    return f"yes-{cmid[:8]}"


def now_ms() -> int:
    """Wall-clock milliseconds, the clock of the events' ``ts`` (same machine)."""
    return int(time.time() * 1000)


class Stats:
    def __init__(self) -> None:
        self.counts: Counter = Counter()


class ChaosDevice:
    def __init__(self, user: "ChaosUser", device_id: str, rng: random.Random):
        self.user = user
        self.base_id = device_id
        self.id = device_id
        self.rng = rng
        self.log = DeviceLog(user.name, device_id)
        self.past_logs: list[DeviceLog] = []  #: logs of earlier installs (see :meth:`reinstall`)
        self.installs = 0
        self._reinstall = False
        self.ws: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.epoch: str | None = None
        self.received: list[str] = []  # every event id, across connections
        self.acked: list[str] = []
        self.confirmed_ack: str | None = None
        self._pending_ack: str | None = None
        self.segment: Segment | None = None  #: the connection now open, once welcomed
        self.stopping = False

    # -- connection loop -----------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.05
        while not self.stopping:
            try:
                await self._session()
                backoff = 0.05
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidStatus, TimeoutError, ValueError) as exc:
                self.user.stats.counts[f"connect_failed:{type(exc).__name__}"] += 1
            self.connected.clear()
            self.ws = None
            if self.stopping:
                return
            await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 1.0)

    def reinstall(self) -> None:
        """The app is reinstalled: from the next connection on the device has
        a new id and remembers nothing, so it connects as a new device."""
        self._reinstall = True
        self.drop()

    def _start_over(self) -> None:
        self._reinstall = False
        self.installs += 1
        self.past_logs.append(self.log)
        self.id = f"{self.base_id}-r{self.installs}"
        self.log = DeviceLog(self.user.name, self.id)
        self.epoch = None
        self.received = []
        self.acked = []
        self.confirmed_ack = None
        self._pending_ack = None

    def _resume_choice(self) -> tuple[str, str | None]:
        if not self.received:
            return "new", None
        roll = self.rng.random()
        if roll < 0.15 and self.confirmed_ack:
            return "offset", None
        if roll < 0.3 and len(self.received) > 3:
            return "stale", self.received[-self.rng.randint(2, min(20, len(self.received)))]
        return "last_id", self.received[-1]

    async def _session(self) -> None:
        if self._reinstall:
            self._start_over()
        mode, last_id = self._resume_choice()
        url = self.rng.choice(self.user.urls())
        segment: Segment | None = None
        try:
            async with connect(url, open_timeout=5, close_timeout=1, max_size=None) as ws:
                hello = {"type": "hello", "token": self.user.token, "device_id": self.id,
                         "last_id": last_id, "epoch": self.epoch if last_id else None}
                hello_at = now_ms()
                await ws.send(json.dumps(hello))
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if first["type"] != "welcome":
                    raise ValueError(f"no welcome: {first}")
                self.epoch = first["epoch"]
                segment = Segment(mode, last_id, first["resume_from"], first["recovered"], list(self.acked),
                                  self.confirmed_ack, hello_at=hello_at, welcome_at=now_ms())
                self.log.segments.append(segment)
                self.segment = segment
                await self._receive(ws, segment, mode)
        finally:
            if segment is not None and segment.closed_at is None:
                segment.closed_at = now_ms()
            self.segment = None

    async def _receive(self, ws: ClientConnection, segment: Segment, mode: str) -> None:
        self.user.stats.counts[f"resume:{mode}"] += 1
        self.ws = ws
        self.connected.set()
        since_ack = 0
        async for data in ws:
            frame = json.loads(data)
            kind = frame["type"]
            if kind == "event":
                segment.arrived.append(now_ms())
                segment.events.append(frame)
                self.user.on_event(frame)
                self.received.append(frame["id"])
                since_ack += 1
                if since_ack >= 8:
                    since_ack = 0
                    await self._ack(ws, frame["id"])
            elif kind == "accepted":
                self.user.on_accepted(frame["client_msg_id"], frame["id"])
            elif kind == "pong":
                if self._pending_ack is not None:
                    self.confirmed_ack = self._pending_ack
                    self._pending_ack = None
            elif kind == "error":
                self.user.stats.counts[f"error:{frame['code']}"] += 1
                self._pending_ack = None  # the ack may be what failed
                self.user.on_error(frame)

    async def _ack(self, ws: ClientConnection, entry_id: str) -> None:
        self.acked.append(entry_id)
        self._pending_ack = entry_id
        await ws.send(json.dumps({"type": "ack", "id": entry_id}))
        await ws.send(json.dumps({"type": "ping"}))  # its pong confirms the ack was stored

    async def send(self, frame: dict) -> bool:
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(json.dumps(frame))
            return True
        except ConnectionClosed:
            return False

    def drop(self) -> None:
        """Vanish without a close frame."""
        if self.segment is not None and self.segment.closed_at is None:
            self.segment.closed_at = now_ms()  # from here on nothing is expected on it
        if self.ws is not None and self.ws.transport is not None:
            self.ws.transport.abort()

    def logs(self) -> list[DeviceLog]:
        """Every install's log, the current one last."""
        return [*self.past_logs, self.log]

    async def stop(self) -> None:
        self.stopping = True
        if self.segment is not None and self.segment.closed_at is None:
            self.segment.closed_at = now_ms()
        if self.ws is not None:
            await self.ws.close()


class ChaosUser:
    def __init__(self, name: str, token: str, devices: int, urls: Callable[[], list[str]], rng: random.Random,
                 stats: Stats):
        self.name = name
        self.token = token
        self.urls = urls
        self.rng = rng
        self.stats = stats
        self.devices = [ChaosDevice(self, f"d{i}", random.Random(rng.random())) for i in range(devices)]
        self.pending: dict[str, tuple[dict, float]] = {}  # cmid -> (frame, last attempt)
        self.accepts: list[tuple[str, str, str]] = []  # (user, cmid, inbound id)
        self.accepted: set[str] = set()
        self.streamed: set[str] = set()  #: cmids whose reply the graph streams (the word "streamed")
        #: conversation -> wall-clock ms of each stop asked for (a cancel, a send
        #: with if_busy: interrupt): what makes a ``cancelled`` event legitimate
        self.stops: dict[str, list[int]] = {}
        self.sent = 0
        self.asking: set[str] = set()  #: cmids whose turn asks the person (the word "ask")
        #: cmid -> (conversation, interrupt id, last answer sent: loop time, 0 for none): questions waiting
        self.questions: dict[str, tuple[str, str, float]] = {}
        self.finished: set[str] = set()  #: cmids whose final event a device saw
        self.by_conversation: dict[str, list[str]] = {}  #: conversation -> cmids accepted in it, in order
        self.edits: set[str] = set()  #: the new cmids of edits sent and not refused

    def on_accepted(self, cmid: str, inbound_id: str) -> None:
        self.accepts.append((self.name, cmid, inbound_id))
        if cmid not in self.accepted:
            frame = self.pending.get(cmid, ({},))[0]
            if frame.get("conversation_id"):
                self.by_conversation.setdefault(frame["conversation_id"], []).append(cmid)
        self.accepted.add(cmid)
        self.pending.pop(cmid, None)

    def on_event(self, event: dict) -> None:
        cmid, kind = event.get("client_msg_id"), event["kind"]
        if kind == "interrupt" and cmid not in self.finished:
            asked = json.loads(event["text"])
            known = self.questions.get(cmid)
            if known is None or known[1] != asked["id"]:
                self.questions[cmid] = (event["conversation_id"], asked["id"], 0.0)
        elif kind in ("resumed", "assistant", "turn_error", "cancelled"):
            self.questions.pop(cmid, None)
            if kind != "resumed":
                self.finished.add(cmid)

    def on_error(self, frame: dict) -> None:
        cmid = frame.get("client_msg_id")
        if cmid in self.edits and frame["code"] in EDIT_REFUSALS and cmid not in self.accepted:
            self.edits.discard(cmid)
            self.pending.pop(cmid, None)
            self.stats.counts["edits_refused"] += 1

    def connected_devices(self) -> list[ChaosDevice]:
        return [d for d in self.devices if d.connected.is_set()]

    async def new_message(self) -> None:
        cmid = uuid.uuid4().hex
        think = self.rng.choice(["0", "0", "0.05", "0.1", "0.3"])
        streamed = " streamed" if self.rng.random() < 0.5 else ""  # the reply comes as deltas, then the final
        conversation = f"c{self.rng.randint(0, 2)}"
        ask = " ask" if self.rng.random() < ASK_SHARE else ""  # the turn asks the person first
        frame = {"type": "send", "conversation_id": conversation, "client_msg_id": cmid,
                 "text": f"sleep:{think} {self.name} says {self.sent}{streamed}{ask}"}
        if ask:
            self.asking.add(cmid)
        if self.rng.random() < INTERRUPT_SHARE:  # double-texting: stop what runs, answer this one
            frame["if_busy"] = "interrupt"
            self.stops.setdefault(conversation, []).append(now_ms())
            self.stats.counts["interrupt_sends"] += 1
        self.sent += 1
        if streamed:
            self.streamed.add(cmid)
        self.pending[cmid] = (frame, 0.0)
        await self._try_send(cmid)

    async def _try_send(self, cmid: str) -> None:
        frame, _ = self.pending[cmid]
        devices = self.connected_devices()
        if devices and await self.rng.choice(devices).send(frame):
            self.pending[cmid] = (frame, asyncio.get_running_loop().time())
            self.stats.counts["sends"] += 1

    async def cancel(self) -> None:
        """Stop whatever runs in one of the conversations, from any device."""
        devices = self.connected_devices()
        if not devices:
            return
        conversation = f"c{self.rng.randint(0, 2)}"
        self.stops.setdefault(conversation, []).append(now_ms())  # before it is sent: it may act at once
        if await self.rng.choice(devices).send({"type": "cancel", "conversation_id": conversation}):
            self.stats.counts["cancels"] += 1

    async def answer_due(self) -> None:
        """Answer each waiting question from any device; again if no
        ``resumed`` came within RESEND_AFTER (the answer may have been lost:
        a second one is refused, ``already_resumed``)."""
        now = asyncio.get_running_loop().time()
        for cmid, (conversation, interrupt_id, last) in list(self.questions.items()):
            if now - last < RESEND_AFTER:
                continue
            devices = self.connected_devices()
            if devices and await self.rng.choice(devices).send({
                    "type": "resume", "conversation_id": conversation, "client_msg_id": cmid,
                    "interrupt_id": interrupt_id, "value": answer_for(cmid)}):
                if cmid in self.questions:
                    self.questions[cmid] = (conversation, interrupt_id, now)
                self.stats.counts["resumes" if not last else "resumes_again"] += 1

    async def edit(self) -> None:
        """Edit one of the messages of a conversation (it may be refused: busy, gone)."""
        conversation = f"c{self.rng.randint(0, 2)}"
        candidates = self.by_conversation.get(conversation)
        if not candidates:
            return
        cmid = uuid.uuid4().hex
        frame = {"type": "edit", "conversation_id": conversation, "client_msg_id": self.rng.choice(candidates[-5:]),
                 "new_client_msg_id": cmid, "text": f"sleep:0 {self.name} edits {len(self.edits)}"}
        self.edits.add(cmid)
        self.pending[cmid] = (frame, 0.0)
        self.stats.counts["edits"] += 1
        await self._try_send(cmid)

    async def resend_due(self) -> None:
        now = asyncio.get_running_loop().time()
        for cmid, (_, last) in list(self.pending.items()):
            if cmid in self.pending and now - last >= RESEND_AFTER:
                self.stats.counts["resends"] += 1
                await self._try_send(cmid)

    async def resend_accepted(self) -> None:
        """A resend of a message that was already accepted (its `accepted` "lost")."""
        if not self.accepts:
            return
        _, cmid, _ = self.rng.choice(self.accepts)
        devices = self.connected_devices()
        if devices:
            text = f"duplicate of {cmid}"
            await self.rng.choice(devices).send({"type": "send", "conversation_id": "c0", "client_msg_id": cmid,
                                                 "text": text})
            self.stats.counts["duplicate_resends"] += 1
