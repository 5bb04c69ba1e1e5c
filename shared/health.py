"""Health endpoints of every service: ``/healthz``, ``/readyz``, ``/metrics``.

One small HTTP/1.1 server per process on ``METRICS_PORT`` (asyncio streams,
no framework): one ``GET`` per connection (``Connection: close``), a request
head of at most ``HEALTH_MAX_REQUEST_BYTES`` (else 431) sent within
``HEALTH_REQUEST_TIMEOUT`` (else 408), at most ``HEALTH_MAX_CONNECTIONS``
served at once (beyond: 503 at once), any other method 405, any other path
404. Answers are small JSON bodies: ``{"status": "ok"}``, or
``{"status": "fail", "reasons": [...]}`` with 503. A reason is a fixed
sentence about this process (never an error message, which could carry a
host name or a URL); the details go to the log, once per change.

*Liveness* (``/healthz``): the event loop is not stuck. A heartbeat task
stamps the monotonic clock every ``min(1 s, HEALTH_STALL_AFTER / 4)``;
``/healthz`` fails once the stamp is older than ``HEALTH_STALL_AFTER``. The
server runs on the same loop, so a loop stuck *right now* cannot answer at
all: the probe's own timeout is the signal then. The stamp adds what a
timeout cannot see: a loop that answers again after a stall longer than the
bound (its first answer still says so), and a heartbeat that died.

*Readiness* (``/readyz``): two kinds of check, so that a thousand probes
cost Redis nothing more than one: *conditions*, plain functions without
I/O evaluated on every request ("draining", "not subscribed"), and
*probes*, coroutines with I/O (a Redis ``PING``, ``XINFO GROUPS``) that one
task runs every ``HEALTH_REFRESH`` seconds, each bounded by
``HEALTH_CHECK_TIMEOUT``; requests read the cached result. A cached result
older than ``HEALTH_STALL_AFTER`` counts as a failure (the checker is stuck).

*Metrics* (``/metrics``): ``Health.metrics``, a function returning the body
and its content type (``prometheus_client.generate_latest`` and
``CONTENT_TYPE_LATEST`` fit), answers it; without one the path is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .errors import SwitchboardError
from .settings import HealthSettings, SettingsError

log = logging.getLogger(__name__)

#: A readiness condition: no I/O; a reason when not ready, else None.
Condition = Callable[[], "str | None"]
#: A readiness probe: I/O allowed (run in the background, cached).
Probe = Callable[[], Awaitable["str | None"]]
#: ``/metrics``: the body and its content type.
MetricsHook = Callable[[], "tuple[bytes, str]"]

PATHS = ("/healthz", "/readyz", "/metrics")
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token: a method


@dataclass(frozen=True)
class Answer:
    status: http.HTTPStatus
    body: bytes
    content_type: str = "application/json"
    allow: str | None = None  #: the Allow header of a 405

    @property
    def ok(self) -> bool:
        return self.status == http.HTTPStatus.OK


def ok() -> Answer:
    return Answer(http.HTTPStatus.OK, b'{"status":"ok"}')


def fail(reasons: list[str] | tuple[str, ...], status: http.HTTPStatus = http.HTTPStatus.SERVICE_UNAVAILABLE) -> Answer:
    return Answer(status, json.dumps({"status": "fail", "reasons": list(reasons)}, separators=(",", ":")).encode())


def error(status: http.HTTPStatus, allow: str | None = None) -> Answer:
    """The answer to a request this server does not serve."""
    body = json.dumps({"status": "error", "error": status.phrase.lower()}, separators=(",", ":")).encode()
    return Answer(status, body, allow=allow)


# -- pure rules ---------------------------------------------------------------------------


def liveness(now: float, last_beat: float, stall_after: float) -> Answer:
    age = now - last_beat
    if age > stall_after:
        return fail([f"event loop stalled: no heartbeat for {age:.1f} s (HEALTH_STALL_AFTER {stall_after:g} s)"])
    return ok()


def readiness(conditions: list[str], checked: tuple[float, tuple[str, ...]] | None, now: float,
              stall_after: float) -> Answer:
    """Ready when no condition and no cached probe result gives a reason
    and that result is fresh."""
    reasons = list(conditions)
    if checked is None:
        reasons.append("readiness not checked yet")
    elif now - checked[0] > stall_after:
        reasons.append(f"readiness not checked for {now - checked[0]:.1f} s")
    else:
        reasons.extend(checked[1])
    return fail(reasons) if reasons else ok()


class BadRequest(SwitchboardError):
    """A request this server refuses before routing it."""

    def __init__(self, status: http.HTTPStatus):
        super().__init__(status.phrase)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  #: without the query


def parse_head(head: bytes) -> Request:
    """The request line of a request head (``\\r\\n\\r\\n`` included or not);
    raises :class:`BadRequest` (400, 505). Headers are not needed: every
    answer is the same for every client, and the connection always closes."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
        raise BadRequest(http.HTTPStatus.BAD_REQUEST)
    method, target, version = parts
    match = _VERSION.match(version)
    if match is None:
        raise BadRequest(http.HTTPStatus.BAD_REQUEST)
    if match.group(1) != b"1":
        raise BadRequest(http.HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    try:
        path = target.decode("ascii").split("?", 1)[0]
    except UnicodeDecodeError:
        raise BadRequest(http.HTTPStatus.BAD_REQUEST) from None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        raise BadRequest(http.HTTPStatus.BAD_REQUEST)
    return Request(method.decode("ascii"), path)


def render(answer: Answer) -> bytes:
    """The whole HTTP/1.1 response."""
    head = [f"HTTP/1.1 {answer.status.value} {answer.status.phrase}",
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(answer.body)}",
            "Cache-Control: no-store",
            "Connection: close"]
    if answer.allow:
        head.append(f"Allow: {answer.allow}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body


async def redis_ping(client: aioredis.Redis) -> str | None:
    """A readiness probe: Redis answers ``PING``."""
    try:
        await client.ping()
    except (RedisError, OSError):
        return "redis: unreachable"
    return None


# -- the state of one process ---------------------------------------------------------------


class Health:
    """What ``/healthz`` and ``/readyz`` say about this process, and the
    server that says it (:meth:`running`)."""

    def __init__(self, settings: HealthSettings, name: str = "service", *,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.name = name
        self.clock = clock
        self.metrics: MetricsHook | None = None
        self._conditions: list[Condition] = []
        self._probes: list[tuple[str, Probe]] = []
        self._last_beat = clock()
        self._checked: tuple[float, tuple[str, ...]] | None = None
        self._reported: tuple[str, ...] | None = None  # the last readiness reasons logged
        self.port: int | None = None  #: the port the server listens on (``running``)

    def add_condition(self, condition: Condition) -> None:
        self._conditions.append(condition)

    def add_probe(self, name: str, probe: Probe) -> None:
        self._probes.append((name, probe))

    # -- answers ------------------------------------------------------------------------

    def liveness(self) -> Answer:
        return liveness(self.clock(), self._last_beat, self.settings.stall_after)

    def readiness(self) -> Answer:
        reasons = [reason for reason in (condition() for condition in self._conditions) if reason]
        return readiness(reasons, self._checked, self.clock(), self.settings.stall_after)

    def answer(self, method: str, path: str) -> Answer:
        if path not in PATHS or (path == "/metrics" and self.metrics is None):
            return error(http.HTTPStatus.NOT_FOUND)
        if method != "GET":
            return error(http.HTTPStatus.METHOD_NOT_ALLOWED, allow="GET")
        if path == "/healthz":
            return self.liveness()
        if path == "/readyz":
            return self.readiness()
        assert self.metrics is not None
        try:
            body, content_type = self.metrics()
        except Exception:  # noqa: BLE001 - a broken exporter must not take the endpoint down
            log.exception("metrics hook failed")
            return error(http.HTTPStatus.INTERNAL_SERVER_ERROR)
        return Answer(http.HTTPStatus.OK, body, content_type)

    # -- background work ----------------------------------------------------------------

    def beat(self) -> None:
        self._last_beat = self.clock()

    async def check(self) -> tuple[str, ...]:
        """Run every probe once (concurrently, each bounded); cache the result."""
        results = await asyncio.gather(*(self._probe(name, probe) for name, probe in self._probes))
        reasons = tuple(reason for reason in results if reason)
        self._checked = (self.clock(), reasons)
        if reasons != self._reported:
            if reasons:
                log.warning("%s not ready: %s", self.name, "; ".join(reasons))
            elif self._reported is not None:
                log.info("%s ready again", self.name)
            self._reported = reasons
        return reasons

    async def _probe(self, name: str, probe: Probe) -> str | None:
        timeout = self.settings.check_timeout
        try:
            async with asyncio.timeout(timeout):
                return await probe()
        except TimeoutError:
            return f"{name}: no answer within {timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - a failing probe is a reason, not a crash
            log.debug("readiness probe %s failed: %r", name, exc)
            return f"{name}: check failed ({type(exc).__name__})"

    async def _heartbeat(self) -> None:
        interval = min(1.0, self.settings.stall_after / 4)
        while True:
            self.beat()
            await asyncio.sleep(interval)

    async def _check_loop(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.settings.refresh)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Health]:
        """The heartbeat, the readiness checks and (with ``METRICS_PORT``) the
        server, for the duration of the block. The server is listening when
        the block starts; a port that cannot be bound raises ``SettingsError``."""
        self.beat()
        tasks = [asyncio.create_task(self._heartbeat(), name=f"{self.name}-heartbeat"),
                 asyncio.create_task(self._check_loop(), name=f"{self.name}-readiness")]
        server: HealthServer | None = None
        try:
            if self.settings.port:
                server = HealthServer(self)
                try:
                    await server.start()
                except OSError as exc:
                    raise SettingsError(f"cannot serve health on METRICS_HOST={self.settings.host} "
                                        f"METRICS_PORT={self.settings.port}: {exc.strerror or exc}") from None
                self.port = server.port
                log.info("%s health endpoints on http://%s:%d (/healthz, /readyz%s)", self.name,
                         self.settings.host, server.port, ", /metrics" if self.metrics is not None else "")
            yield self
        finally:
            if server is not None:
                await server.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# -- the HTTP server ----------------------------------------------------------------------------


class HealthServer:
    """``Health``'s answers over HTTP/1.1: one bounded request per connection."""

    def __init__(self, health: Health):
        self.health = health
        self.settings = health.settings
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self.port: int | None = None

    async def start(self) -> None:
        s = self.settings
        # ``limit`` bounds what the reader buffers: a head without its blank
        # line within it raises LimitOverrunError (431).
        self._server = await asyncio.start_server(self._handle, s.host, s.port, limit=s.max_request_bytes,
                                                  backlog=128)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        busy = len(self._handlers) >= self.settings.max_connections
        if task is not None:
            self._handlers.add(task)
        try:
            if busy:
                await self._send(writer, error(http.HTTPStatus.SERVICE_UNAVAILABLE))
                return
            try:
                async with asyncio.timeout(self.settings.request_timeout):
                    answer = await self._read(reader)
            except TimeoutError:
                answer = error(http.HTTPStatus.REQUEST_TIMEOUT)
            if answer is not None:
                await self._send(writer, answer)
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            await self._close(reader, writer)
            if task is not None:
                self._handlers.discard(task)

    async def _close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then read what the client still sends until it closes
        too (at most ``min(1 s, HEALTH_REQUEST_TIMEOUT)``): closing a socket
        with unread input makes the kernel reset the connection, which can
        destroy the answer before the client reads it."""
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):  # TimeoutError is an OSError
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(min(1.0, self.settings.request_timeout)):
                while await reader.read(4096):
                    pass
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _read(self, reader: asyncio.StreamReader) -> Answer | None:
        """The answer to the request on ``reader``; None if the client left."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return error(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        except asyncio.IncompleteReadError:
            return None
        try:
            request = parse_head(head)
        except BadRequest as exc:
            return error(exc.status)
        return self.health.answer(request.method, request.path)

    async def _send(self, writer: asyncio.StreamWriter, answer: Answer) -> None:
        writer.write(render(answer))
        async with asyncio.timeout(self.settings.request_timeout):
            await writer.drain()
