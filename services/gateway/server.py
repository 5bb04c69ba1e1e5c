"""The gateway's WebSocket server: a thin adapter around the protocol, the
store and the delivery hub.

One connection = one reader (this handler) and one writer task draining the
connection's bounded outbox, so every frame the client gets -- replies and
events alike -- goes out in one order through one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import uuid

from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from switchboard.shared import connection as redisconn
from switchboard.shared.checkpoints import setup_saver, use_caching_serializer
from switchboard.shared import protocol as p
from switchboard.shared import streamids
from switchboard.shared.settings import GatewaySettings
from switchboard.shared.tasks import finish

from . import auth, resume, wsbatch
from .history import HistoryReader
from .hub import Connection, DeliveryHub
from .store import GatewayStore

log = logging.getLogger(__name__)

#: Connections the kernel may hold for accept (capped by net.core.somaxconn).
#: asyncio's default, 100, is far below a reconnect storm after a gateway or
#: network failure: every connection beyond it is dropped by the kernel and
#: the device's TCP retries after 1, 3, 7, 15 ... seconds, which is what such
#: a storm's duration then measures.
LISTEN_BACKLOG = 4096


class Gateway:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.redis = redisconn.make_client(settings.redis)
        self.raw_redis = redisconn.make_client(settings.redis, decode=False)
        self.store = GatewayStore(self.redis, settings.streams)
        self.subscriber = redisconn.make_subscriber(settings.redis)
        self.hub = DeliveryHub(self.raw_redis, settings.server_id, self.subscriber)
        self.saver = use_caching_serializer(AsyncRedisSaver(redis_client=self.raw_redis))
        self.history = HistoryReader(self.saver)

    async def serve(self, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set; then close every socket with 1001 (reconnect)."""
        await setup_saver(self.saver)
        await self.store.load()
        stop = stop or asyncio.Event()
        hub_task = asyncio.create_task(self.hub.run(), name="delivery-hub")
        try:
            await asyncio.wait_for(self.hub.ready.wait(), timeout=30)
            s = self.settings
            async with serve(
                self._handle, s.host, s.port,
                process_request=self._route,
                # Frames up to twice MAX_MESSAGE_SIZE are read and answered with a
                # ``too_large`` error; beyond that websockets closes with 1009.
                max_size=2 * s.max_message_size,
                max_queue=16,
                ping_interval=s.heartbeat_interval,
                ping_timeout=s.heartbeat_interval,
                close_timeout=2,
                backlog=LISTEN_BACKLOG,
                # permessage-deflate compresses every frame once per connection:
                # off unless COMPRESSION is set (figures in bench/NOTES.md).
                compression="deflate" if s.compression else None,
            ) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                log.info("gateway %s listening on ws://%s:%s/ws", s.server_id, s.host, port)
                if ready is not None:
                    ready.set()
                await stop.wait()
                log.info("gateway %s shutting down: closing %d connections", s.server_id, len(self.hub.conns))
                server.close(close_connections=True)  # 1001 going away: clients reconnect
                await server.wait_closed()
        finally:
            self.hub.closing.set()
            await finish([hub_task], grace=3.0)
            await self.redis.aclose()
            await self.raw_redis.aclose()
            await self.subscriber.aclose()

    @staticmethod
    def _route(connection: ServerConnection, request):  # noqa: ANN001
        if request.path.split("?", 1)[0] != "/ws":
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found; the WebSocket endpoint is /ws\n")
        return None

    # -- one connection ------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        wsbatch.check_connection(ws)
        hello = await self._receive_hello(ws)
        if hello is None:
            return
        try:
            user = auth.verify(hello.token, self.settings.jwt_secret)
        except auth.AuthError as exc:
            await _refuse(ws, p.ErrorCode.UNAUTHORIZED, str(exc), p.CloseCode.UNAUTHORIZED)
            return
        try:
            state, stored = await self.store.stream_state(user, hello.device_id, self.settings.replay_window)
        except RedisError as exc:
            log.warning("hello of %s/%s failed: %s", user, hello.device_id, exc,
                        extra={"user": user, "device": hello.device_id})
            await _refuse(ws, p.ErrorCode.UNAVAILABLE, "storage unavailable, retry", p.CloseCode.INTERNAL_ERROR)
            return
        where = resume.resolve(state, last_id=hello.last_id, epoch=hello.epoch, stored=stored)
        conn = Connection(uuid.uuid4().hex, user, hello.device_id, state.epoch, where.resume_from,
                          self.settings.outbox_size, close=lambda code, why: _close_later(ws, code, why),
                          outbox_bytes=self.settings.outbox_bytes,
                          slow_consumer_after=self.settings.slow_consumer_after,
                          resync_holdoff=self.settings.resync_holdoff)
        # The first frame of an empty outbox (of at least 16): it always fits.
        conn.outbox.offer([p.encode(p.Welcome(user_id=user, device_id=hello.device_id, epoch=state.epoch,
                                              resume_from=where.resume_from, recovered=where.recovered))])
        log.debug("welcome user=%s device=%s conn=%s resume_from=%s recovered=%s (%s)",
                  user, hello.device_id, conn.id, where.resume_from, where.recovered, where.source,
                  extra=conn.log_context)
        writer = asyncio.create_task(_drain(ws, conn), name=f"writer-{conn.id}")
        await self.hub.add(conn)
        try:
            async for data in ws:
                await self._on_frame(conn, data)
        except ConnectionClosed:
            pass
        finally:
            await self.hub.remove(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _receive_hello(self, ws: ServerConnection) -> p.Hello | None:
        try:
            data = await asyncio.wait_for(ws.recv(), self.settings.hello_timeout)
        except TimeoutError:
            await ws.close(p.CloseCode.HELLO_TIMEOUT, "no hello in time")
            return None
        except ConnectionClosed:
            return None
        try:
            frame = p.decode_client_frame(data, self.settings.max_message_size)
        except p.FrameError as exc:
            await _refuse(ws, exc.code, exc.message, p.CloseCode.PROTOCOL_ERROR)
            return None
        if not isinstance(frame, p.Hello):
            await _refuse(ws, p.ErrorCode.HELLO_REQUIRED, "the first frame must be hello", p.CloseCode.PROTOCOL_ERROR)
            return None
        return frame

    async def _on_frame(self, conn: Connection, data: str | bytes) -> None:
        try:
            frame = p.decode_client_frame(data, self.settings.max_message_size)
        except p.FrameError as exc:
            await conn.reply(exc.to_frame())
            return
        try:
            await self._dispatch(conn, frame)
        except p.FrameError as exc:
            await conn.reply(exc.to_frame())
        except (RedisError, OSError) as exc:
            log.warning("storage error for user=%s conn=%s: %s", conn.user, conn.id, exc, extra=conn.log_context)
            await conn.reply(p.Error(code=p.ErrorCode.UNAVAILABLE, message="storage unavailable, retry",
                                     client_msg_id=getattr(frame, "client_msg_id", None)))
        except Exception:
            log.exception("frame handling failed for user=%s conn=%s", conn.user, conn.id, extra=conn.log_context)
            await conn.reply(p.Error(code=p.ErrorCode.INTERNAL, message="internal error",
                                     client_msg_id=getattr(frame, "client_msg_id", None)))

    async def _dispatch(self, conn: Connection, frame: p.ClientFrame) -> None:
        match frame:
            case p.Send(conversation_id=conv, client_msg_id=cmid, text=text):
                in_id, fresh = await self.store.accept(conn.user, conn.device, conv, cmid, text)
                if not fresh:
                    log.info("duplicate send user=%s cmid=%s -> %s", conn.user, cmid, in_id,
                             extra={**conn.log_context, "conversation": conv, "entry": in_id})
                await conn.reply(p.Accepted(client_msg_id=cmid, id=in_id))
            case p.Ack(id=entry_id):
                if streamids.later(entry_id, conn.last):
                    raise p.FrameError(p.ErrorCode.INVALID_ACK,
                                       f"ack of {entry_id}, but this connection was sent events up to {conn.last}")
                await self.store.store_offset(conn.user, conn.device, conn.epoch, entry_id)
            case p.History(conversation_id=conv, limit=limit):
                messages = await self.history.read(conn.user, conv, limit)
                if messages is None:
                    raise p.FrameError(p.ErrorCode.UNKNOWN_CONVERSATION, f"no conversation {conv!r}")
                await conn.reply(p.HistoryResult(conversation_id=conv, messages=messages))
            case p.Ping():
                await conn.reply(p.Pong())
            case p.Hello():
                raise p.FrameError(p.ErrorCode.DUPLICATE_HELLO, "hello was already received on this connection")


#: Frames and bytes the writer sends in one socket write, at most (a frame
#: larger than WRITE_BYTES goes alone).
WRITE_FRAMES = 256
WRITE_BYTES = 256 * 1024


async def _drain(ws: ServerConnection, conn: Connection) -> None:
    """The connection's only writer: outbox -> socket, in order.

    Everything queued (up to WRITE_FRAMES / WRITE_BYTES) goes out in one write
    -- one system call instead of one per frame -- as separate WebSocket text
    frames of already encoded bytes."""
    try:
        while True:
            await wsbatch.send_texts(ws, await conn.outbox.take(WRITE_FRAMES, WRITE_BYTES))
    except ConnectionClosed:
        pass


async def _refuse(ws: ServerConnection, code: p.ErrorCode, message: str, close: p.CloseCode) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send(p.encode_text(p.Error(code=code, message=message)))
        await ws.close(close, message[:120])


_closing: set[asyncio.Task] = set()


def _close_later(ws: ServerConnection, code: p.CloseCode, why: str) -> None:
    """Close from synchronous code (the hub, which logs why); the task is
    kept until it ends."""
    task = asyncio.get_running_loop().create_task(ws.close(code, why))
    _closing.add(task)
    task.add_done_callback(_closing.discard)
