"""Typed, frozen settings per service, built from the environment at the entrypoint.

Only :mod:`switchboard.cli` calls the ``from_env`` constructors; everything else
receives a settings object. Every limit has an explicit default here and in the
README's configuration table.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import SwitchboardError

DEV_JWT_SECRET = "switchboard-dev-secret-change-me"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SettingsError(SwitchboardError, ValueError):
    """An environment variable has a value that cannot be used."""


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value == "" else value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _get(env, name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = _get(env, name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name, "1" if default else "0").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (1/0, true/false, yes/no, on/off)")


def default_server_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class RedisSettings:
    url: str = DEFAULT_REDIS_URL
    max_connections: int = 64  #: per process; callers wait for a free connection
    socket_timeout: float = 10.0  #: must exceed every XREAD/XREADGROUP BLOCK

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisSettings:
        d = cls()  # the defaults, written once: on the fields above
        return cls(
            url=_get(env, "REDIS_URL", d.url),
            max_connections=_int(env, "REDIS_MAX_CONNECTIONS", d.max_connections, minimum=4),
        )


@dataclass(frozen=True)
class StreamSettings:
    """Retention and ids shared by the writers (gateway, worker) and readers (fanout)."""

    outbound_maxlen: int = 10_000  #: events kept per user; older ones are trimmed
    inbound_maxlen: int = 10_000  #: accepted messages kept per user (approximate)
    dedup_ttl: int = 86_400  #: seconds a client_msg_id is remembered
    work_shards: int = 1  #: number of work streams (fixed for a deployment)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StreamSettings:
        d = cls()
        return cls(
            outbound_maxlen=_int(env, "OUTBOUND_MAXLEN", d.outbound_maxlen, minimum=10),
            inbound_maxlen=_int(env, "INBOUND_MAXLEN", d.inbound_maxlen, minimum=10),
            dedup_ttl=_int(env, "DEDUP_TTL", d.dedup_ttl, minimum=1),
            work_shards=_int(env, "WORK_SHARDS", d.work_shards, minimum=1),
        )


def _common(env: Mapping[str, str]) -> dict:
    """Fields every service has: Redis, stream retention, instance name."""
    return {
        "redis": RedisSettings.from_env(env),
        "streams": StreamSettings.from_env(env),
        "server_id": _get(env, "SERVER_ID", default_server_id()),
    }


@dataclass(frozen=True)
class GatewaySettings:
    redis: RedisSettings = RedisSettings()
    streams: StreamSettings = StreamSettings()
    server_id: str = dataclasses.field(default_factory=default_server_id)
    host: str = "127.0.0.1"
    port: int = 8765
    max_message_size: int = 1 << 20  #: bytes; a larger frame gets a ``too_large`` error
    heartbeat_interval: float = 20.0  #: seconds between WebSocket pings
    hello_timeout: float = 10.0  #: seconds a new connection has to send ``hello``
    jwt_secret: str = DEV_JWT_SECRET
    replay_window: int = 100  #: events a new device receives after ``welcome``
    outbox_size: int = 1024  #: frames queued per connection; full pauses delivery (4008 after 10 s full)
    outbox_bytes: int = 8 << 20  #: bytes queued per connection (the first frame always fits); full pauses too
    slow_consumer_after: float = 10.0  #: seconds a connection may stay paused (outbox full) before 4008
    resync_holdoff: float = 0.25  #: seconds after an attach in which a gap does not re-attach again
    compression: bool = False  #: permessage-deflate (off: it costs CPU per connection, see bench/NOTES.md)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        d = cls()
        return cls(
            **_common(env),
            host=_get(env, "WEBSOCKET_HOST", d.host),
            port=_int(env, "WEBSOCKET_PORT", d.port),
            max_message_size=_int(env, "MAX_MESSAGE_SIZE", d.max_message_size, minimum=1024),
            heartbeat_interval=_float(env, "HEARTBEAT_INTERVAL", d.heartbeat_interval, minimum=0.1),
            hello_timeout=_float(env, "HELLO_TIMEOUT", d.hello_timeout, minimum=0.1),
            jwt_secret=_get(env, "JWT_SECRET", d.jwt_secret),
            replay_window=_int(env, "REPLAY_WINDOW", d.replay_window, minimum=0),
            outbox_size=_int(env, "OUTBOX_SIZE", d.outbox_size, minimum=16),
            outbox_bytes=_int(env, "OUTBOX_BYTES", d.outbox_bytes, minimum=1024),
            slow_consumer_after=_float(env, "SLOW_CONSUMER_AFTER", d.slow_consumer_after, minimum=0.1),
            resync_holdoff=_float(env, "RESYNC_HOLDOFF", d.resync_holdoff, minimum=0.0),
            compression=_bool(env, "COMPRESSION", d.compression),
        )


@dataclass(frozen=True)
class WorkerSettings:
    redis: RedisSettings = RedisSettings()
    streams: StreamSettings = StreamSettings()
    server_id: str = dataclasses.field(default_factory=default_server_id)
    graph: str = "switchboard.worker.graph:graph"
    checkpoint_ttl: float | None = None  #: minutes; None keeps checkpoints forever
    checkpoint_cache: int = 256  #: conversations whose newest checkpoint stays in memory (0: none)
    checkpoint_keep: int = 20  #: checkpoints kept per conversation (0: all)
    concurrency: int = 64  #: conversations run at once by one worker
    turn_timeout: float = 60.0  #: seconds one graph run may take
    lease_ttl: float = 15.0  #: seconds a conversation lease lives without renewal
    claim_idle: float = 15.0  #: seconds before a dead worker's work is claimed
    read_block: float = 2.0  #: seconds XREADGROUP blocks (below the socket timeout)
    max_attempts: int = 3  #: attempts at one message before it is dead-lettered
    dead_letter_maxlen: int = 10_000  #: dead-letter entries kept
    shutdown_grace: float = 25.0  #: seconds running turns get to finish on SIGTERM
    stream_deltas: bool = True  #: stream chat models' tokens to devices as ``delta`` events
    delta_interval: float = 0.05  #: seconds between a reply's delta writes after its first

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        d = cls()
        ttl = _float(env, "CHECKPOINT_TTL", 0.0)
        return cls(
            **_common(env),
            graph=_get(env, "GRAPH", d.graph),
            checkpoint_ttl=ttl or None,
            checkpoint_cache=_int(env, "CHECKPOINT_CACHE", d.checkpoint_cache, minimum=0),
            checkpoint_keep=_int(env, "CHECKPOINT_KEEP", d.checkpoint_keep, minimum=0),
            concurrency=_int(env, "WORKER_CONCURRENCY", d.concurrency, minimum=1),
            turn_timeout=_float(env, "TURN_TIMEOUT", d.turn_timeout, minimum=0.1),
            lease_ttl=_float(env, "LEASE_TTL", d.lease_ttl, minimum=0.5),
            claim_idle=_float(env, "CLAIM_IDLE", d.claim_idle, minimum=0.5),
            max_attempts=_int(env, "MAX_ATTEMPTS", d.max_attempts, minimum=1),
            dead_letter_maxlen=_int(env, "DEAD_LETTER_MAXLEN", d.dead_letter_maxlen, minimum=10),
            shutdown_grace=_float(env, "SHUTDOWN_GRACE", d.shutdown_grace, minimum=0.0),
            stream_deltas=_bool(env, "STREAM_DELTAS", d.stream_deltas),
            delta_interval=_float(env, "DELTA_INTERVAL", d.delta_interval, minimum=0.0),
        )


@dataclass(frozen=True)
class FanoutSettings:
    redis: RedisSettings = RedisSettings()
    streams: StreamSettings = StreamSettings()
    server_id: str = dataclasses.field(default_factory=default_server_id)
    batch: int = 500  #: events read per user per round trip
    batch_bytes: int = 1 << 20  #: bytes read per user per round trip (beyond one event), hence per delivery message
    round_bytes: int = 4 << 20  #: bytes one round publishes to one gateway (beyond one delivery)
    replay_pace: float = 0.05  #: seconds between two byte-budget-cut reads of one user (a replay's pace)
    sweep_interval: float = 2.0  #: seconds between safety re-reads of every attached user
    alive_ttl: float = 3.0  #: seconds the liveness key survives without renewal

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FanoutSettings:
        d = cls()
        return cls(
            **_common(env),
            batch=_int(env, "FANOUT_BATCH", d.batch, minimum=1),
            batch_bytes=_int(env, "FANOUT_BATCH_BYTES", d.batch_bytes, minimum=1024),
            round_bytes=_int(env, "FANOUT_ROUND_BYTES", d.round_bytes, minimum=1024),
            replay_pace=_float(env, "FANOUT_REPLAY_PACE", d.replay_pace, minimum=0.0),
            sweep_interval=_float(env, "FANOUT_SWEEP", d.sweep_interval, minimum=0.05),
            alive_ttl=_float(env, "FANOUT_ALIVE_TTL", d.alive_ttl, minimum=0.5),
        )
