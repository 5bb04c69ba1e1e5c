"""The gateway's WebSocket server: a thin adapter around the protocol, the
store and the delivery hub. Here is a connection's life (admission,
``hello``, token expiry); what each frame after ``hello`` does is
:mod:`.frames`.

One connection = one reader (this handler) and one writer task draining the
connection's bounded outbox, so every frame the client gets -- replies and
events alike -- goes out in one order through one place.
"""

from __future__ import annotations

import asyncio
import ssl
import contextlib
import dataclasses
import http
import logging
import time
import uuid

from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from switchboard.shared import connection as redisconn
from switchboard.shared import health
from switchboard.shared.nodes import NodeRegistry
from switchboard.shared.checkpoints import SwitchboardRedisSaver, setup_saver, use_caching_serializer
from switchboard.shared.metrics import GatewayMetrics
from switchboard.shared import protocol as p
from switchboard.shared import streamids
from switchboard.shared.project import GraphLoadError, graph_choice
from switchboard.shared.settings import GatewaySettings, SettingsError
from switchboard.shared.tasks import finish

from . import admission, auth, resume, web, wsbatch
from .expiry import TokenDeadline
from .frames import Frames
from .ratelimit import FrameGate, Verdict
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


def tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """The server's TLS context when SSL_CERTFILE is set (wss://); read at
    start, so a missing or bad file stops the gateway before it listens."""
    if not settings.ssl_certfile:
        if settings.ssl_keyfile:
            raise SettingsError("SSL_KEYFILE is set without SSL_CERTFILE")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"cannot load SSL_CERTFILE/SSL_KEYFILE: {exc}") from None
    return context


class Gateway:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.tls = tls_context(settings)
        self.verifier = auth.Verifier.from_settings(settings)  # reads key files: SettingsError first
        #: conn id -> (socket, token deadline), for ``refresh`` and expiry.
        self.tokens: dict[str, tuple[ServerConnection, TokenDeadline]] = {}
        self.metrics = GatewayMetrics(max_commands=settings.health.metrics_max_commands)
        self.redis = redisconn.make_client(settings.redis, metrics=self.metrics.redis)
        self.raw_redis = redisconn.make_client(settings.redis, decode=False, metrics=self.metrics.redis)
        # ENCRYPTION_KEYS: the store seals what it writes, the hub opens the
        # events it delivers and the saver the history it reads.
        self.store = GatewayStore(self.redis, settings.streams, settings.quotas, settings.encryption,
                                  replicas=settings.redis)
        self.subscriber = redisconn.make_subscriber(settings.redis)
        self.hub = DeliveryHub(self.raw_redis, settings.server_id, self.subscriber, settings.encryption)
        self.saver = use_caching_serializer(SwitchboardRedisSaver(redis_client=self.raw_redis), settings.encryption)
        self.history = HistoryReader(self.saver)
        try:
            self.graphs = graph_choice(settings.graph)  #: the graph names a ``send`` may pick
        except GraphLoadError as exc:
            raise SettingsError(f"GRAPH: {exc}") from None
        #: every frame after ``hello``, answered (:mod:`.frames`)
        self.frames = Frames(settings, self.store, self.history, self.graphs, self.metrics, refresh=self._refresh)
        self.admission = admission.AdmissionStore(self.redis, settings.admission_ttl, settings.server_id)
        self.admitted = admission.Registry(self.admission, settings.max_devices_per_user)
        self.unauthenticated = admission.LocalCounts(settings.max_unauthenticated_per_ip)
        self._listening = False
        self._stop: asyncio.Event | None = None
        # The health checks' own small client: a pool busy with traffic must not read as Redis down.
        self.health_redis = redisconn.make_client(settings.redis, max_connections=2)
        self.health = self._health()
        self.metrics.welcomed.set_function(lambda: len(self.hub.conns))
        #: This gateway in the node registry (``switchboard nodes``), from start to SIGTERM.
        self.node = NodeRegistry(self.redis, settings.nodes, "gateway", settings.server_id,
                                 lambda: {"connections": len(self.hub.conns), "port": self.settings.port})

    def _health(self) -> health.Health:
        """Ready = listening, not draining, Redis answering (docs/operations.md, "Health")."""
        checks = health.Health(self.settings.health, "gateway")

        def state() -> str | None:
            if self._stop is not None and self._stop.is_set():
                return "draining: the gateway is shutting down"
            return None if self._listening else "starting: not accepting connections yet"

        checks.add_condition(state)
        checks.add_probe("redis", lambda: health.redis_ping(self.health_redis))
        checks.metrics = self.metrics.exposition
        return checks

    async def serve(self, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set; then, after ``DRAIN_DELAY`` seconds of
        serving while not ready, close every socket with 1001 (reconnect)."""
        stop = stop or asyncio.Event()
        self._stop = stop
        try:
            async with self.health.running():
                await self._serve(ready, stop)
        finally:
            await self.health_redis.aclose()

    async def _serve(self, ready: asyncio.Event | None, stop: asyncio.Event) -> None:
        await setup_saver(self.saver)
        await self.store.load()
        hub_task = asyncio.create_task(self.hub.run(), name="delivery-hub")
        renew_task = asyncio.create_task(self.admitted.run(self.hub.closing), name="admission-renew")
        node_task = asyncio.create_task(self.node.run(stop), name="gateway-node")
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
                ssl=self.tls,
                # permessage-deflate compresses every frame once per connection:
                # off unless COMPRESSION is set (figures in bench/NOTES.md).
                compression="deflate" if s.compression else None,
            ) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                log.info("gateway %s listening on %s://%s:%s/ws (encryption at rest: %s)", s.server_id,
                         "wss" if self.tls else "ws", s.host, port,
                         repr(s.encryption) if s.encryption.enabled else "off")
                self._listening = True
                if ready is not None:
                    ready.set()
                await stop.wait()
                if s.drain_delay:
                    # /readyz says "draining" from now on: load balancers that
                    # check it stop sending new connections before these close.
                    log.info("gateway %s draining for %g s", s.server_id, s.drain_delay)
                    await asyncio.sleep(s.drain_delay)
                self._listening = False
                log.info("gateway %s shutting down: closing %d connections", s.server_id, len(self.hub.conns))
                server.close(close_connections=True)  # 1001 going away: clients reconnect
                await server.wait_closed()
        finally:
            self.hub.closing.set()
            stop.set()  # also when serving failed: the node record goes
            await finish([hub_task, renew_task, node_task], grace=3.0)
            await self.redis.aclose()
            await self.raw_redis.aclose()
            await self.subscriber.aclose()

    def _route(self, connection: ServerConnection, request):  # noqa: ANN001
        path = request.path.split("?", 1)[0]
        if path in ("/healthz", "/readyz"):
            # For load balancers that check the traffic port; /metrics only on METRICS_PORT.
            answer = self.health.answer("GET", path)
            response = connection.respond(answer.status, answer.body.decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = answer.content_type
            response.headers["Cache-Control"] = "no-store"
            return response
        if path != "/ws":
            if web.is_page(path):
                return web.respond(request, path)  # the web chat client (docs/web-client.md)
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found; the WebSocket endpoint is /ws\n")
        if not admission.origin_allowed(request.headers.get("Origin"), self.settings.allowed_origins,
                                        host=request.headers.get("Host")):
            self.metrics.handshakes["origin_refused"].inc()
            return connection.respond(http.HTTPStatus.FORBIDDEN, "origin not allowed\n")
        return None

    async def _refuse(self, ws: ServerConnection, code: p.ErrorCode, message: str, close: p.CloseCode) -> None:
        """An error frame, then the close: a connection that cannot go on."""
        with contextlib.suppress(ConnectionClosed):
            await ws.send(p.encode_text(p.Error(code=code, message=message)))
            self.metrics.sent["error"].inc()
            self.metrics.error(code.value)
            await ws.close(close, message[:120])

    # -- one connection ------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.metrics.connections.inc()
        try:
            await self._connection(ws)
        finally:
            self.metrics.connections.dec()
            self.metrics.closed(wsbatch.close_code(ws))

    async def _connection(self, ws: ServerConnection) -> None:
        wsbatch.check_connection(ws)
        # Until hello is accepted a message may be HELLO_MAX_SIZE at most
        # (see wsbatch.set_max_size): an unauthenticated socket holds no more.
        wsbatch.set_max_size(ws, self.settings.hello_max_size)
        ip = admission.ip_key(admission.client_address(
            ws.remote_address[0] if ws.remote_address else None,
            ws.request.headers.get_all("X-Forwarded-For") if ws.request is not None else [],
            self.settings.trusted_proxies))
        if not self.unauthenticated.enter(ip):
            self.metrics.handshakes["too_many_connections"].inc()
            await self._refuse(ws, p.ErrorCode.TOO_MANY_CONNECTIONS,
                               "too many connections before hello from this address",
                               p.CloseCode.TOO_MANY_CONNECTIONS)
            return
        conn_id = uuid.uuid4().hex
        try:
            slot = await self._admit_ip(ws, conn_id, ip)
            hello = await self._receive_hello(ws) if slot is not None else None
        finally:
            self.unauthenticated.leave(ip)
        if slot is None:
            return
        try:
            if hello is not None:
                await self._serve_hello(ws, slot, hello)
        finally:
            await self._release(slot.conn)

    async def _admit_ip(self, ws: ServerConnection, conn_id: str, ip: str) -> admission.Slot | None:
        """Count the connection against MAX_CONNECTIONS_PER_IP (all gateways);
        None if refused (and closed)."""
        try:
            verdict = await self.admission.admit_ip(ip, conn_id, self.settings.max_connections_per_ip)
        except RedisError as exc:
            log.warning("admission of a connection from %s failed: %s", ip, exc)
            self.metrics.handshakes["unavailable"].inc()
            await self._refuse(ws, p.ErrorCode.UNAVAILABLE, "storage unavailable, retry", p.CloseCode.INTERNAL_ERROR)
            return None
        if isinstance(verdict, admission.Refused):
            log.info("refused a connection from %s: %d connections", ip, verdict.count)
            self.metrics.handshakes["too_many_connections"].inc()
            await self._refuse(ws, p.ErrorCode.TOO_MANY_CONNECTIONS, "too many connections from this address",
                               p.CloseCode.TOO_MANY_CONNECTIONS)
            return None
        slot = admission.Slot(conn_id, ip)
        self.admitted.add(slot, lambda: _close_later(ws, p.CloseCode.TOO_MANY_CONNECTIONS,
                                                     "replaced by a newer connection of this device"))
        return slot

    async def _admit_device(self, ws: ServerConnection, slot: admission.Slot, user: str, device: str) -> bool:
        """Count the connection against MAX_DEVICES_PER_USER (all gateways); a
        device that holds a slot takes it over from its older connection,
        which is closed (here at once, on another gateway at its renewal)."""
        verdict = await self.admission.admit_device(user, device, slot.conn, self.settings.max_devices_per_user)
        if isinstance(verdict, admission.Refused):
            log.info("refused device %s of %s: %d devices connected", device, user, verdict.count,
                     extra={"user": user, "device": device})
            self.metrics.handshakes["too_many_connections"].inc()
            await self._refuse(ws, p.ErrorCode.TOO_MANY_CONNECTIONS,
                               f"{verdict.count} devices of this user are connected (the most allowed)",
                               p.CloseCode.TOO_MANY_CONNECTIONS)
            return False
        self.admitted.update(dataclasses.replace(slot, user=user, device=device))
        if verdict.previous is not None:
            self.admitted.lose(verdict.previous)
        return True

    async def _release(self, conn_id: str) -> None:
        """Free the connection's slots (at once; else they expire within ADMISSION_TTL)."""
        slot = self.admitted.remove(conn_id)
        if slot is None:
            return
        try:
            await asyncio.shield(self._release_slots(slot))
        except (RedisError, OSError) as exc:
            log.warning("releasing the slots of %s failed (they expire): %s", conn_id, exc)

    async def _release_slots(self, slot: admission.Slot) -> None:
        if slot.user is not None and slot.device is not None:
            await self.admission.release_device(slot.user, slot.device, slot.conn)
        await self.admission.release_ip(slot.ip, slot.conn)

    async def _serve_hello(self, ws: ServerConnection, slot: admission.Slot, hello: p.Hello) -> None:
        try:
            claims = self.verifier.verify(hello.token)
        except auth.AuthError as exc:
            self.metrics.handshakes["unauthorized"].inc()
            await self._refuse(ws, p.ErrorCode.UNAUTHORIZED, str(exc), p.CloseCode.UNAUTHORIZED)
            return
        user = claims.user
        try:
            if not await self._admit_device(ws, slot, user, hello.device_id):
                return
            state, stored = await self.store.stream_state(user, hello.device_id, self.settings.replay_window)
        except RedisError as exc:
            log.warning("hello of %s/%s failed: %s", user, hello.device_id, exc,
                        extra={"user": user, "device": hello.device_id})
            self.metrics.handshakes["unavailable"].inc()
            await self._refuse(ws, p.ErrorCode.UNAVAILABLE, "storage unavailable, retry", p.CloseCode.INTERNAL_ERROR)
            return
        where = resume.resolve(state, last_id=hello.last_id, epoch=hello.epoch, stored=stored)
        self.metrics.handshakes["welcome"].inc()
        self.metrics.replay(where.recovered, where.source)
        # Before welcome: a client waiting for welcome sends its first large
        # frame under the full limit.
        wsbatch.set_max_size(ws, 2 * self.settings.max_message_size)
        conn = Connection(slot.conn, user, hello.device_id, state.epoch, where.resume_from,
                          self.settings.outbox_size, close=lambda code, why: _close_later(ws, code, why),
                          outbox_bytes=self.settings.outbox_bytes,
                          slow_consumer_after=self.settings.slow_consumer_after,
                          resync_holdoff=self.settings.resync_holdoff)
        # The first frame of an empty outbox (of at least 16): it always fits.
        conn.outbox.offer([p.encode(p.Welcome(user_id=user, device_id=hello.device_id, epoch=state.epoch,
                                              resume_from=where.resume_from, recovered=where.recovered,
                                              expires_at=int(claims.expires_at)))])
        log.debug("welcome user=%s device=%s conn=%s resume_from=%s recovered=%s (%s)",
                  user, hello.device_id, conn.id, where.resume_from, where.recovered, where.source,
                  extra=conn.log_context)
        # Events committed after this hello's view of the stream are live (delivery lag).
        live_after_ms = streamids.parse(state.last_id)[0]
        writer = asyncio.create_task(_drain(ws, conn, self.metrics, live_after_ms), name=f"writer-{conn.id}")
        deadline = TokenDeadline(claims.expires_at, self.settings.jwt_leeway)
        self.tokens[conn.id] = (ws, deadline)
        expirer = asyncio.create_task(self._expire(ws, conn, deadline), name=f"expiry-{conn.id}")
        await self.hub.add(conn)
        s = self.settings
        gate = FrameGate(s.max_frames_per_second, s.frame_burst, s.frame_reject_limit, time.monotonic())
        try:
            async for data in ws:
                if deadline.passed():  # a frame after expiry is not processed
                    await self._end_expired(ws, conn, deadline)
                    break
                verdict = gate.admit(time.monotonic())
                if verdict is Verdict.PASS:
                    await self.frames.handle(conn, data)
                elif verdict is Verdict.REFUSE:
                    self.metrics.received["refused"].inc()
                    await conn.reply(p.Error(code=p.ErrorCode.RATE_LIMITED,
                                             message=f"more than {s.max_frames_per_second:g} frames per second"))
                else:
                    self.metrics.received["refused"].inc()
                    log.info("closing a flooding connection user=%s conn=%s: %d frames refused",
                             conn.user, conn.id, gate.refused, extra=conn.log_context)
                    await self._close_flood(ws, conn)
                    break
        except ConnectionClosed:
            pass
        finally:
            self.tokens.pop(conn.id, None)
            await self.hub.remove(conn)
            for task in (writer, expirer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _expire(self, ws: ServerConnection, conn: Connection, deadline: TokenDeadline) -> None:
        await deadline.wait()
        await self._end_expired(ws, conn, deadline)

    async def _end_expired(self, ws: ServerConnection, conn: Connection, deadline: TokenDeadline) -> None:
        """``token_expired``, then close 4004: the client reconnects with a new
        token and ``last_id``; what it did not receive here is replayed."""
        if not deadline.end():
            return
        log.info("token of user=%s conn=%s expired", conn.user, conn.id, extra=conn.log_context)
        conn.delivery.closed = True
        await self._refuse(ws, p.ErrorCode.TOKEN_EXPIRED, "token expired: reconnect with a new token and last_id",
                           p.CloseCode.TOKEN_EXPIRED)

    async def _refresh(self, conn: Connection, token: str) -> None:
        """A new token for this connection: the same user only."""
        ws, deadline = self.tokens[conn.id]
        try:
            claims = self.verifier.verify(token)
        except auth.AuthError as exc:
            raise p.FrameError(p.ErrorCode.UNAUTHORIZED, str(exc)) from None
        if claims.user != conn.user:
            log.warning("refresh of user=%s conn=%s with a token of another user", conn.user, conn.id,
                        extra=conn.log_context)
            conn.delivery.closed = True
            await self._refuse(ws, p.ErrorCode.UNAUTHORIZED, "the token is for another user", p.CloseCode.UNAUTHORIZED)
            return
        deadline.move(claims.expires_at)
        await conn.reply(p.Refreshed(expires_at=int(claims.expires_at)))

    @staticmethod
    async def _close_flood(ws: ServerConnection, conn: Connection) -> None:
        """Close 4006 after what the outbox holds (the answers so far and a
        last ``rate_limited``) is written, or 2 s, whichever comes first."""
        await conn.reply(p.Error(code=p.ErrorCode.RATE_LIMITED, message="too many frames refused; send slower"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.outbox.wait_room(conn.outbox.size), 2.0)
        await ws.close(p.CloseCode.RATE_LIMITED, "too many frames refused")

    async def _receive_hello(self, ws: ServerConnection) -> p.Hello | None:
        try:
            data = await asyncio.wait_for(ws.recv(), self.settings.hello_timeout)
        except TimeoutError:
            self.metrics.handshakes["hello_timeout"].inc()
            await ws.close(p.CloseCode.HELLO_TIMEOUT, "no hello in time")
            return None
        except ConnectionClosed:
            self.metrics.handshakes["abandoned"].inc()
            return None
        try:
            frame = p.decode_client_frame(data, self.settings.max_message_size)
        except p.FrameError as exc:
            self.metrics.received["invalid"].inc()
            self.metrics.handshakes["bad_hello"].inc()
            await self._refuse(ws, exc.code, exc.message, p.CloseCode.PROTOCOL_ERROR)
            return None
        self.metrics.frame_received(frame)
        if not isinstance(frame, p.Hello):
            self.metrics.handshakes["hello_required"].inc()
            await self._refuse(ws, p.ErrorCode.HELLO_REQUIRED, "the first frame must be hello",
                               p.CloseCode.PROTOCOL_ERROR)
            return None
        return frame


#: Frames and bytes the writer sends in one socket write, at most (a frame
#: larger than WRITE_BYTES goes alone).
WRITE_FRAMES = 256
WRITE_BYTES = 256 * 1024


async def _drain(ws: ServerConnection, conn: Connection, metrics: GatewayMetrics, live_after_ms: int) -> None:
    """The connection's only writer: outbox -> socket, in order.

    Everything queued (up to WRITE_FRAMES / WRITE_BYTES) goes out in one write
    -- one system call instead of one per frame -- as separate WebSocket text
    frames of already encoded bytes; then they are counted (and live events'
    delivery lag measured: :meth:`GatewayMetrics.written`)."""
    try:
        while True:
            frames = await conn.outbox.take(WRITE_FRAMES, WRITE_BYTES)
            await wsbatch.send_texts(ws, frames)
            metrics.written(frames, live_after_ms)
    except ConnectionClosed:
        pass


_closing: set[asyncio.Task] = set()


def _close_later(ws: ServerConnection, code: p.CloseCode, why: str) -> None:
    """Close from synchronous code (the hub, which logs why); the task is
    kept until it ends."""
    task = asyncio.get_running_loop().create_task(ws.close(code, why))
    _closing.add(task)
    task.add_done_callback(_closing.discard)
