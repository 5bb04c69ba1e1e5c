"""The asyncio client: one device of one user, connected to a gateway.

::

    async with Client(url, token=token, state=FileState(path)) as client:
        accepted_id = await client.send("trip", "Hello")
        async for item in client.events():
            ...  # an Event, or a Gap (``recovered: false``: reload history)

The connection is kept open in the background: a drop reconnects after a
back-off (:mod:`.policy`), resuming after the newest event received, so
:meth:`Client.events` yields every event once, in order, across reconnects.
An event counts as processed -- saved in the state store, acknowledged to the
server in batches -- when the loop asks for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from switchboard.shared import protocol as p
from switchboard.shared import streamids

from .errors import ClientClosed, OutcomeUnknown, RequestFailed
from .matching import Matcher, Request
from .policy import Backoff, Next, after_close
from .state import MemoryState, Position, StateStore
from .stream import EventBuffer, Gap, Item, Tracker

log = logging.getLogger(__name__)

TokenProvider = Callable[[], str | Awaitable[str]]

#: Acknowledge after this many processed events, or ``ACK_INTERVAL`` seconds after the first unacknowledged.
ACK_EVERY = 50
ACK_INTERVAL = 1.0
#: Bytes of one server frame, at most (a history page of long messages fits).
MAX_FRAME_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ConnectionState:
    """What :class:`Client` reports to ``on_state`` as the connection changes."""

    state: str  #: "connecting", "connected", "disconnected" or "stopped"
    url: str = ""
    code: int | None = None  #: the close code ("disconnected", "stopped"); None: dropped without one
    reason: str = ""
    retry_in: float | None = None  #: seconds until the next attempt ("disconnected")
    welcome: p.Welcome | None = None  #: "connected"


class Client:
    """The reference client of protocol v1 (docs/client.md).

    ``url``: one gateway URL, or several tried in turn on each reconnect.
    ``token``, or ``token_provider`` (a function, sync or async, returning a
    fresh token: called at start without ``token`` and after close code 4004).
    ``device_id``: stable per device; None takes the state store's, or a new
    one that is then saved. ``state``: where the position is kept
    (:class:`~.state.MemoryState` by default).
    """

    def __init__(self, url: str | Sequence[str], *, token: str | None = None,
                 token_provider: TokenProvider | None = None, device_id: str | None = None,
                 state: StateStore | None = None, backoff: Backoff = Backoff(),
                 on_state: Callable[[ConnectionState], None] | None = None,
                 ack_every: int = ACK_EVERY, ack_interval: float = ACK_INTERVAL,
                 open_timeout: float = 10.0, ssl: Any = None):
        self._urls = [url] if isinstance(url, str) else list(url)
        if not self._urls:
            raise ValueError("no gateway URL")
        if token is None and token_provider is None:
            raise ValueError("a token or a token_provider is needed")
        self._token = token
        self._token_provider = token_provider
        self._state = state or MemoryState()
        stored = self._state.load()
        self.device_id = device_id or stored.device_id or f"py-{uuid.uuid4().hex[:12]}"
        self._position = Position(self.device_id, stored.epoch, stored.last_id)
        if stored.device_id != self.device_id:
            self._position = Position(self.device_id)  # another device's position is not ours
            self._state.save(self._position)
        self._tracker = Tracker(self._position.epoch, self._position.last_id)
        self._backoff = backoff
        self._on_state = on_state
        self._ack_every = ack_every
        self._ack_interval = ack_interval
        self._open_timeout = open_timeout
        self._ssl = ssl
        self._matcher = Matcher()
        self._buffer = EventBuffer()
        self._ordered_lock = asyncio.Lock()
        self._ordered_idle = asyncio.Event()
        self._ordered_idle.set()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._stopped: ClientClosed | None = None
        self._runner: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None
        self._ack_task: asyncio.Future[None] | None = None
        self._ending: asyncio.Future[None] | None = None
        self._taken: Item | None = None  #: the item the application is processing
        self._unacked: str | None = None  #: the newest processed event id not yet acknowledged
        self._unacked_count = 0
        self._conn_epoch: str | None = None
        self._conn_newest: str | None = None  #: newest event id this connection was sent (or its resume_from)
        self.welcome: p.Welcome | None = None  #: the current connection's

    # -- life ------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, *, wait: bool = True) -> None:
        """Connect in the background; ``wait``: return once the first ``welcome`` came (or raise ClientClosed)."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"switchboard-client-{self.device_id}")
            self._acker = asyncio.create_task(self._ack_loop(), name=f"switchboard-acks-{self.device_id}")
        if wait:
            await self.wait_connected()

    async def wait_connected(self, timeout: float | None = None) -> p.Welcome:
        stopped = asyncio.ensure_future(self._wait_stopped())
        connected = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait({stopped, connected}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            connected.cancel()
        if self._stopped is not None:
            raise self._stopped
        if self.welcome is None or not self._connected.is_set():
            raise TimeoutError(f"not connected within {timeout} s")
        return self.welcome

    async def _wait_stopped(self) -> None:
        assert self._runner is not None
        await asyncio.shield(self._runner)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def close(self) -> None:
        """Acknowledge what was processed, close with 1000 and stop; ``events()`` then ends."""
        if self._stopped is None:
            self._stopped = ClientClosed("the client was closed")
            await self._buffer.end(None)  # events() ends quietly: the application asked for it
            ws = self._ws
            if ws is not None:
                with contextlib.suppress(ConnectionClosed, OSError):
                    await self._flush_ack()
                    await ws.close(1000)
        for task in (self._runner, self._acker):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_all(self._stopped)
        await self._buffer.end(None)

    # -- events ----------------------------------------------------------------

    async def events(self) -> AsyncIterator[p.Event | Gap]:
        """Every event once, in order, across reconnects, with a :class:`Gap`
        where the server could not resume exactly. Ends after :meth:`close`;
        raises :class:`ClientClosed` when a close code stopped the client."""
        while True:
            self.processed()
            item = await self._buffer.get()
            if item is None:
                return
            self._taken = item
            yield item.value

    def processed(self) -> None:
        """The application is done with the item :meth:`events` yielded last: save its
        position and count it for the next ack. The loop does this when it asks for
        the next item; call it before leaving the loop with ``break`` to count the last one."""
        item, self._taken = self._taken, None
        if item is None:
            return
        value = item.value
        last_id = value.id if isinstance(value, p.Event) else value.resume_from
        self._position = self._position.at(item.epoch, last_id)
        self._state.save(self._position)
        if isinstance(value, p.Event):
            self._unacked = value.id
            self._unacked_count += 1
            if self._unacked_count >= self._ack_every and self._ack_task is None:
                self._ack_task = asyncio.ensure_future(self._ack_now())

    async def _ack_now(self) -> None:
        try:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self._flush_ack()
        finally:
            self._ack_task = None

    @property
    def position(self) -> Position:
        """The last processed position (what the state store holds)."""
        return self._position

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ack_interval)
            with contextlib.suppress(ConnectionClosed, OSError):
                await self._flush_ack()

    async def _flush_ack(self) -> None:
        entry, ws = self._unacked, self._ws
        if entry is None or ws is None or self._position.epoch != self._conn_epoch:
            return
        if self._conn_newest is None or streamids.later(entry, self._conn_newest):
            return  # beyond what this connection was sent: invalid_ack; the next connection acks it
        self._unacked, self._unacked_count = None, 0
        await ws.send(p.encode_text(p.Ack(id=entry)))

    # -- requests --------------------------------------------------------------

    async def send(self, conversation_id: str, text: str, *, client_msg_id: str | None = None,
                   graph: str | None = None, if_busy: str = "enqueue") -> str:
        """Send a message; return its ``accepted`` id. Resent after a reconnect
        (the same ``client_msg_id``: answered once) until accepted."""
        cmid = client_msg_id or uuid.uuid4().hex
        frame = p.Send(conversation_id=conversation_id, client_msg_id=cmid, text=text, graph=graph,
                       if_busy=if_busy)  # type: ignore[arg-type]
        answer = await self._by_id(frame, cmid)
        assert isinstance(answer, p.Accepted)
        return answer.id

    async def history(self, conversation_id: str, *, limit: int = 50,
                      before: str | None = None) -> p.HistoryResult:
        answer = await self._ordered(p.History(conversation_id=conversation_id, limit=limit, before=before),
                                     "history")
        assert isinstance(answer, p.HistoryResult)
        return answer

    async def conversations(self, *, limit: int = 20, before: str | None = None) -> p.ConversationsResult:
        answer = await self._ordered(p.Conversations(limit=limit, before=before), "conversations")
        assert isinstance(answer, p.ConversationsResult)
        return answer

    async def rename(self, conversation_id: str, title: str) -> None:
        await self._ordered(p.Rename(conversation_id=conversation_id, title=title), "pong", then_ping=True)

    async def clear(self, conversation_id: str, *, client_msg_id: str | None = None) -> str:
        """Clear the conversation (with an id: resending is safe); return the ``accepted`` id."""
        cmid = client_msg_id or uuid.uuid4().hex
        answer = await self._ordered(p.Clear(conversation_id=conversation_id, client_msg_id=cmid), "accepted",
                                     cmid=cmid)
        assert isinstance(answer, p.Accepted)
        return answer.id

    async def cancel(self, conversation_id: str, *, client_msg_id: str | None = None) -> None:
        """Stop the running turn (its ``cancelled`` event follows); ``not_running`` raises RequestFailed."""
        await self._ordered(p.Cancel(conversation_id=conversation_id, client_msg_id=client_msg_id), "pong",
                            then_ping=True, resend_safe=False)

    async def resume(self, conversation_id: str, client_msg_id: str, value: Any, *,
                     interrupt_id: str | None = None) -> str:
        """Answer a pending interrupt of message ``client_msg_id``; return the turn's ``accepted`` id."""
        answer = await self._ordered(p.Resume(conversation_id=conversation_id, client_msg_id=client_msg_id,
                                              value=value, interrupt_id=interrupt_id),
                                     "accepted", cmid=client_msg_id, resend_safe=False)
        assert isinstance(answer, p.Accepted)
        return answer.id

    async def regenerate(self, conversation_id: str, client_msg_id: str, *,
                         request_id: str | None = None) -> str:
        """Replace the reply to the last message; resending is safe (a ``request_id`` is always sent)."""
        frame = p.Regenerate(conversation_id=conversation_id, client_msg_id=client_msg_id,
                             request_id=request_id or uuid.uuid4().hex)
        answer = await self._ordered(frame, "accepted", cmid=client_msg_id)
        assert isinstance(answer, p.Accepted)
        return answer.id

    async def edit(self, conversation_id: str, client_msg_id: str, text: str, *,
                   new_client_msg_id: str | None = None) -> str:
        """Replace message ``client_msg_id`` and all after it by ``text``; return the ``accepted`` id."""
        new = new_client_msg_id or uuid.uuid4().hex
        frame = p.Edit(conversation_id=conversation_id, client_msg_id=client_msg_id, text=text,
                       new_client_msg_id=new)
        answer = await self._ordered(frame, "accepted", cmid=new)
        assert isinstance(answer, p.Accepted)
        return answer.id

    async def _by_id(self, frame: p.Send, cmid: str) -> p.ServerFrame:
        self._check_running()
        request = Request(frame, "accepted", cmid=cmid, size=len(p.encode(frame)))
        request.waiter = asyncio.get_running_loop().create_future()
        registered = self._matcher.add_send(request)
        if registered is request:
            await self._write(request)
        try:
            return await asyncio.shield(registered.waiter)
        except asyncio.CancelledError:
            if registered is request and not request.waiter.done():
                self._matcher.forget(request)
            raise

    async def _ordered(self, frame: p.Frame, expect: str, *, cmid: str | None = None, then_ping: bool = False,
                       resend_safe: bool = True) -> p.ServerFrame:
        """One request without a request id at a time (module :mod:`.matching`)."""
        async with self._ordered_lock:
            # A request whose caller gave up still waits for its answer before the next goes out.
            await self._ordered_idle.wait()
            self._check_running()
            request = Request(frame, expect, cmid=cmid, then_ping=then_ping,  # type: ignore[arg-type]
                              resend_safe=resend_safe, size=len(p.encode(frame)))
            request.waiter = asyncio.get_running_loop().create_future()
            self._matcher.start(request)
            self._ordered_idle.clear()
            await self._write(request)
        return await request.waiter

    async def _write(self, request: Request) -> None:
        ws = self._ws
        if ws is None:
            return  # sent after the next welcome
        with contextlib.suppress(ConnectionClosed, OSError):
            await ws.send(p.encode_text(request.frame))
            if request.then_ping:
                await ws.send(p.encode_text(p.Ping()))

    def _check_running(self) -> None:
        if self._stopped is not None:
            raise self._stopped

    def _answer(self, request: Request, frame: p.ServerFrame) -> None:
        if self._matcher.current is None:
            self._ordered_idle.set()
        if request.waiter.done():
            return
        if isinstance(frame, p.Error):
            request.waiter.set_exception(RequestFailed(frame))
        else:
            request.waiter.set_result(frame)

    def _fail(self, requests: list[Request], error: Exception) -> None:
        for request in requests:
            if not request.waiter.done():
                request.waiter.set_exception(error)
                request.waiter.exception()  # retrieved: a caller that gave up leaves no warning

    def _fail_all(self, error: Exception) -> None:
        pending = list(self._matcher.sends.values())
        if self._matcher.current is not None:
            pending.append(self._matcher.current)
        for request in pending:
            self._matcher.forget(request)
        self._ordered_idle.set()
        self._fail(pending, error)

    # -- the connection --------------------------------------------------------

    async def _run(self) -> None:
        attempt, turn = 0, 0
        try:
            while True:
                url = self._urls[turn % len(self._urls)]
                turn += 1
                code, reason, welcomed = await self._connect_once(url)
                self._connected.clear()
                self._ws = None
                self._fail(self._matcher.disconnected(),
                           OutcomeUnknown("the connection dropped before the answer; look at the events"))
                if self._matcher.current is None:
                    self._ordered_idle.set()
                decision = after_close(code, reason, has_token_provider=self._token_provider is not None)
                if decision is Next.STOP:
                    self._stop(ClientClosed(f"closed with {code} ({reason}): not reconnecting", code, reason))
                    self._report(ConnectionState("stopped", url, code, reason))
                    return
                if decision is Next.NEW_TOKEN:
                    self._token = None
                if welcomed:
                    attempt = 0  # a drop after a welcome starts the schedule afresh
                delay = self._backoff.delay(attempt)
                attempt += 1
                self._report(ConnectionState("disconnected", url, code, reason, retry_in=delay))
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave callers waiting forever
            log.exception("client connection loop failed")
            self._stop(ClientClosed(f"the client failed: {exc!r}"))

    def _stop(self, error: ClientClosed) -> None:
        if self._stopped is None:
            self._stopped = error
        self._fail_all(self._stopped)
        self._ending = asyncio.ensure_future(self._buffer.end(self._stopped))

    def _report(self, state: ConnectionState) -> None:
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("on_state callback failed")

    async def _fresh_token(self) -> str:
        if self._token is None:
            assert self._token_provider is not None
            token = self._token_provider()
            self._token = await token if inspect.isawaitable(token) else token
        return self._token

    async def _connect_once(self, url: str) -> tuple[int | None, str, bool]:
        """One connection, from the handshake to its end: ``(close code, reason, welcomed)``."""
        self._report(ConnectionState("connecting", url))
        try:
            token = await self._fresh_token()
            ws = await connect(url, open_timeout=self._open_timeout, max_size=MAX_FRAME_BYTES,
                               **({"ssl": self._ssl} if self._ssl is not None else {}))
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            log.info("cannot connect to %s: %s", url, exc)
            return None, str(exc), False
        welcomed = False
        try:
            hello = p.Hello(token=token, device_id=self.device_id, last_id=self._tracker.last_id,
                            epoch=self._tracker.epoch)
            await ws.send(p.encode_text(hello))
            first = p.decode_server_frame(await asyncio.wait_for(ws.recv(), self._open_timeout))
            if not isinstance(first, p.Welcome):
                log.warning("refused at hello: %s", first)
                await asyncio.wait_for(ws.wait_closed(), self._open_timeout)
                return ws.close_code, ws.close_reason or "", False
            welcomed = True
            await self._welcomed(ws, url, first)
            async for data in ws:
                await self._handle(p.decode_server_frame(data))
        except ConnectionClosed:
            pass
        except (OSError, TimeoutError, msgspec.DecodeError) as exc:
            log.info("connection to %s failed: %r", url, exc)
            ws.transport.abort()
        finally:
            self._ws = None
        rcvd = ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason, welcomed) if rcvd is not None else (None, "", welcomed)

    async def _welcomed(self, ws: ClientConnection, url: str, welcome: p.Welcome) -> None:
        gap = self._tracker.welcome(welcome)
        if gap is not None:
            await self._buffer.put(Item(welcome.epoch, gap))
        self.welcome = welcome
        self._conn_epoch, self._conn_newest = welcome.epoch, welcome.resume_from
        self._ws = ws
        # What was sent and not answered goes again, in order: sends (the same
        # client_msg_id: answered once), then the ordered request if resending it is safe.
        for request in self._matcher.pending():
            await self._write(request)
        self._connected.set()
        self._report(ConnectionState("connected", url, welcome=welcome))

    async def _handle(self, frame: p.ServerFrame) -> None:
        if isinstance(frame, p.Event):
            self._conn_newest = frame.id
            if self._tracker.is_new(frame):
                assert self._tracker.epoch is not None
                await self._buffer.put(Item(self._tracker.epoch, frame))
            return
        request = self._matcher.match(frame)
        if request is not None:
            self._answer(request, frame)
        elif isinstance(frame, p.Error):
            log.warning("server error not answering a request: %s %s", frame.code.value, frame.message)
