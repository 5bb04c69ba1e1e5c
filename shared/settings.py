"""Typed, frozen settings per service, built from the environment at the entrypoint.

Only :mod:`switchboard.cli` calls the ``from_env`` constructors; everything else
receives a settings object. Every limit has an explicit default here and in the
README's configuration table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .encryption import InvalidKey, Keyring
from .errors import SwitchboardError
from .redis_url import (CLUSTER_SCHEME, REDIS_SCHEMES, SENTINEL_SCHEME, cluster_nodes, redacted, sentinel_target,
                        split_credentials)

DEV_JWT_SECRET = "switchboard-dev-secret-change-me"
#: Shared-secret JWT algorithms (JWT_SECRET) and public-key ones (an identity
#: provider's key file or JWKS). A gateway accepts one family, never both.
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                   "ES256", "ES384", "ES512", "EdDSA"})
MIN_JWT_SECRET_BYTES = 32  #: RFC 7518 3.2: an HS256 key at least as long as the hash
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


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list; blanks around items are dropped."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _networks(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of IP addresses or networks (CIDR)."""
    values = _list(env, name, default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise SettingsError(f"{name}: {value!r} is not an IP address or network") from None
    return values


def encryption_from_env(env: Mapping[str, str]) -> Keyring:
    """ENCRYPTION_KEYS: comma-separated Fernet keys, the first sealing new data
    (shared/encryption.py); unset: nothing is sealed. A bad key stops the
    service at start, named by its position."""
    try:
        return Keyring(_list(env, "ENCRYPTION_KEYS", ()))
    except InvalidKey as exc:
        raise SettingsError(f"ENCRYPTION_KEYS: {exc}") from None


def default_server_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and who to log in as.

    ``url`` never carries credentials: a user and password given in it are
    moved to ``username``/``password`` when the object is made, so the URL is
    safe to log. ``REDIS_USERNAME`` and ``REDIS_PASSWORD`` (or
    ``REDIS_PASSWORD_FILE``, a mounted Secret) replace the URL's."""

    url: str = DEFAULT_REDIS_URL
    username: str | None = None  #: the ACL user (None: ``default``)
    password: str | None = dataclasses.field(default=None, repr=False)
    max_connections: int = 64  #: per process; callers wait for a free connection
    socket_timeout: float = 10.0  #: must exceed every XREAD/XREADGROUP BLOCK
    #: Who to log in to the sentinels as (a ``redis+sentinel://`` URL only;
    #: None: sentinels that ask for no password).
    sentinel_username: str | None = None
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    #: ``REDIS_WAIT_REPLICAS``: replicas that must have an accepted message
    #: and a committed turn before it counts as done (``WAIT``; 0: none, Redis's
    #: asynchronous replication as it is). docs/guarantees.md says what it buys.
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000  #: ``REDIS_WAIT_TIMEOUT_MS``: how long to wait for them

    @property
    def cluster(self) -> bool:
        """A Redis Cluster (``redis+cluster://``): multi-key commands stay in one slot."""
        return self.url.startswith(CLUSTER_SCHEME + ":")

    def __post_init__(self) -> None:
        bare, username, password = split_credentials(self.url)
        object.__setattr__(self, "url", bare)
        if self.username is None:
            object.__setattr__(self, "username", username)
        if self.password is None:
            object.__setattr__(self, "password", password)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisSettings:
        d = cls()  # the defaults, written once: on the fields above
        url = _get(env, "REDIS_URL", d.url)
        scheme = urlsplit(url).scheme
        if scheme not in REDIS_SCHEMES:
            raise SettingsError(f"REDIS_URL={redacted(url)!r} is not a redis://, rediss://, unix://, "
                                "redis+sentinel:// or redis+cluster:// URL")
        if scheme in (SENTINEL_SCHEME, CLUSTER_SCHEME):
            try:
                sentinel_target(url) if scheme == SENTINEL_SCHEME else cluster_nodes(url)
            except ValueError as exc:
                raise SettingsError(f"REDIS_URL={redacted(url)!r}: {exc}") from None
        sentinel_password = _password(env, "REDIS_SENTINEL_PASSWORD")
        password = _password(env, "REDIS_PASSWORD")
        settings = cls(
            url=url,
            username=_get(env, "REDIS_USERNAME", "") or None,
            password=password,
            max_connections=_int(env, "REDIS_MAX_CONNECTIONS", d.max_connections, minimum=4),
            sentinel_username=_get(env, "REDIS_SENTINEL_USERNAME", "") or None,
            sentinel_password=sentinel_password,
            wait_replicas=_int(env, "REDIS_WAIT_REPLICAS", d.wait_replicas),
            wait_timeout_ms=_int(env, "REDIS_WAIT_TIMEOUT_MS", d.wait_timeout_ms, minimum=1),
        )
        if settings.username is not None and settings.password is None:
            raise SettingsError(f"REDIS_USERNAME={settings.username} has no password: set REDIS_PASSWORD_FILE, "
                                "REDIS_PASSWORD or put it in REDIS_URL")
        if settings.sentinel_username is not None and settings.sentinel_password is None:
            raise SettingsError(f"REDIS_SENTINEL_USERNAME={settings.sentinel_username} has no password: "
                                "set REDIS_SENTINEL_PASSWORD_FILE or REDIS_SENTINEL_PASSWORD")
        return settings


def _password(env: Mapping[str, str], name: str) -> str | None:
    """A password given as ``NAME`` or in the file ``NAME_FILE`` (not both), or None."""
    password = _get(env, name, "") or None
    path = _get(env, f"{name}_FILE", "")
    if path:
        if password:
            raise SettingsError(f"{name} and {name}_FILE are both set; set one")
        password = _secret_file(f"{name}_FILE", path)
    return password


def _secret_file(name: str, path: str) -> str:
    """The content of a secret's file (a mounted Kubernetes Secret), without
    the line end an editor or ``echo`` adds; read once, at start."""
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.__class__.__name__}") from None
    if not value:
        raise SettingsError(f"{name}: {path} is empty")
    return value


@dataclass(frozen=True)
class StreamSettings:
    """Retention and ids shared by the writers (gateway, worker) and readers (fanout)."""

    outbound_maxlen: int = 10_000  #: events kept per user; older ones are trimmed
    dedup_ttl: int = 86_400  #: seconds a client_msg_id is remembered
    work_shards: int = 1  #: number of work streams (fixed for a deployment)
    #: Minutes an idle conversation (its checkpoints and keys) and an idle user
    #: (events, device positions, quota state) are kept (CHECKPOINT_TTL); None: for ever.
    retention: float | None = None

    @property
    def retention_ms(self) -> int:
        """``retention`` in ms for the scripts (0: keep for ever)."""
        return int(self.retention * 60_000) if self.retention else 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StreamSettings:
        d = cls()
        return cls(
            outbound_maxlen=_int(env, "OUTBOUND_MAXLEN", d.outbound_maxlen, minimum=10),
            dedup_ttl=_int(env, "DEDUP_TTL", d.dedup_ttl, minimum=1),
            work_shards=_int(env, "WORK_SHARDS", d.work_shards, minimum=1),
            retention=_float(env, "CHECKPOINT_TTL", 0.0, minimum=0.0) or None,
        )


@dataclass(frozen=True)
class QuotaSettings:
    """What one user may ask of the service, checked by the gateway when it
    accepts a message (atomically in Redis, so shared by every gateway).
    0 turns a limit off."""

    sends_per_minute: int = 120  #: messages accepted per user per minute (bursts of this many)
    send_bytes_per_minute: int = 4 << 20  #: bytes of message text accepted per user per minute (bursts too)
    max_text_length: int = 100_000  #: characters of one message's text
    max_conversations: int = 1_000  #: conversations per user (MAX_SESSIONS_PER_USER)
    max_messages: int = 10_000  #: messages accepted per conversation (MAX_MESSAGES_PER_SESSION)
    max_waiting: int = 100  #: messages per user accepted and not yet answered (MAX_UNANSWERED)
    renotice_interval: float = 2.0  #: seconds; see accept.lua (a lost work notice's safety net)

    @classmethod
    def unlimited(cls) -> QuotaSettings:
        """Every limit off (tools and tests that write streams in bulk)."""
        return cls(sends_per_minute=0, send_bytes_per_minute=0, max_text_length=0, max_conversations=0, max_messages=0, max_waiting=0)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QuotaSettings:
        d = cls()
        return cls(
            sends_per_minute=_int(env, "SENDS_PER_MINUTE", d.sends_per_minute, minimum=0),
            send_bytes_per_minute=_int(env, "SEND_BYTES_PER_MINUTE", d.send_bytes_per_minute, minimum=0),
            max_text_length=_int(env, "MAX_TEXT_LENGTH", d.max_text_length, minimum=0),
            max_conversations=_int(env, "MAX_SESSIONS_PER_USER", d.max_conversations, minimum=0),
            max_messages=_int(env, "MAX_MESSAGES_PER_SESSION", d.max_messages, minimum=0),
            max_waiting=_int(env, "MAX_UNANSWERED", d.max_waiting, minimum=0),
            renotice_interval=_float(env, "RENOTICE_INTERVAL", d.renotice_interval, minimum=0.1),
        )


@dataclass(frozen=True)
class HealthSettings:
    """The health endpoints of a service (:mod:`switchboard.shared.health`):
    ``/healthz``, ``/readyz`` and ``/metrics`` on ``METRICS_PORT``."""

    port: int = 0  #: METRICS_PORT; 0: no health server (the chart sets one)
    host: str = "127.0.0.1"  #: METRICS_HOST; ``0.0.0.0`` in containers (probes come from outside)
    stall_after: float = 10.0  #: seconds without a heartbeat of the event loop before /healthz fails
    refresh: float = 1.0  #: seconds between two readiness checks (the answers of /readyz are cached)
    check_timeout: float = 2.0  #: seconds one readiness check may take before it counts as failed
    request_timeout: float = 5.0  #: seconds a client has to send its request head (then 408)
    max_request_bytes: int = 8192  #: bytes of a request head, at most (then 431)
    max_connections: int = 64  #: connections served at once; beyond, 503 at once
    #: METRICS_MAX_COMMANDS: distinct ``command`` labels of the Redis metrics (beyond: ``other``)
    metrics_max_commands: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HealthSettings:
        d = cls()
        port = _int(env, "METRICS_PORT", d.port, minimum=0)
        if port > 65535:
            raise SettingsError(f"METRICS_PORT={port} is not a TCP port (0-65535)")
        return cls(
            port=port,
            host=_get(env, "METRICS_HOST", d.host),
            stall_after=_float(env, "HEALTH_STALL_AFTER", d.stall_after, minimum=1.0),
            refresh=_float(env, "HEALTH_REFRESH", d.refresh, minimum=0.1),
            check_timeout=_float(env, "HEALTH_CHECK_TIMEOUT", d.check_timeout, minimum=0.1),
            request_timeout=_float(env, "HEALTH_REQUEST_TIMEOUT", d.request_timeout, minimum=0.1),
            max_request_bytes=_int(env, "HEALTH_MAX_REQUEST_BYTES", d.max_request_bytes, minimum=256),
            max_connections=_int(env, "HEALTH_MAX_CONNECTIONS", d.max_connections, minimum=1),
            metrics_max_commands=_int(env, "METRICS_MAX_COMMANDS", d.metrics_max_commands, minimum=1),
        )


@dataclass(frozen=True)
class NodeSettings:
    """The registry of live nodes (:mod:`switchboard.shared.nodes`): every
    service renews its record every ``heartbeat`` seconds; a record not
    renewed for ``ttl`` seconds expires (a node killed with -9 is gone from
    ``switchboard nodes`` within ``ttl``)."""

    heartbeat: float = 2.0  #: NODE_HEARTBEAT: seconds between two renewals of a node's record
    ttl: float = 6.0  #: NODE_TTL: seconds a record outlives its last renewal (default 3 x NODE_HEARTBEAT)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NodeSettings:
        heartbeat = _float(env, "NODE_HEARTBEAT", cls.heartbeat, minimum=0.1)
        ttl = _float(env, "NODE_TTL", 3 * heartbeat, minimum=0.3)
        if ttl <= heartbeat:
            raise SettingsError(f"NODE_TTL={ttl:g} must exceed NODE_HEARTBEAT={heartbeat:g} "
                                "(3 times it is the default): else a live node's record expires between renewals")
        return cls(heartbeat=heartbeat, ttl=ttl)


def _common(env: Mapping[str, str]) -> dict:
    """Fields every service has: Redis, stream retention, instance name, health endpoints, node registry."""
    return {
        "redis": RedisSettings.from_env(env),
        "streams": StreamSettings.from_env(env),
        "server_id": _get(env, "SERVER_ID", default_server_id()),
        "health": HealthSettings.from_env(env),
        "nodes": NodeSettings.from_env(env),
    }


@dataclass(frozen=True)
class GatewaySettings:
    redis: RedisSettings = RedisSettings()
    streams: StreamSettings = StreamSettings()
    server_id: str = dataclasses.field(default_factory=default_server_id)
    health: HealthSettings = HealthSettings()
    nodes: NodeSettings = NodeSettings()
    host: str = "127.0.0.1"
    port: int = 8765
    max_message_size: int = 1 << 20  #: bytes; a larger frame gets a ``too_large`` error
    heartbeat_interval: float = 20.0  #: seconds between WebSocket pings
    hello_timeout: float = 10.0  #: seconds a new connection has to send ``hello``
    jwt_secret: str = DEV_JWT_SECRET
    replay_window: int = 100  #: events a new device receives after ``welcome``
    outbox_size: int = 1024  #: frames queued per connection; full pauses delivery (4008 after 10 s full)
    dev_mode: bool = False  #: SWITCHBOARD_DEV: development (the development JWT_SECRET is allowed)
    jwt_algorithms: tuple[str, ...] = ("HS256",)  #: accepted ``alg`` values, all HMAC or all public-key
    jwt_public_key_file: str | None = None  #: PEM public key of the token issuer (RS*/PS*/ES*/EdDSA)
    jwt_jwks_file: str | None = None  #: JWKS file of the token issuer; keys chosen by ``kid``
    jwt_audience: str | None = None  #: required ``aud``; unset: ``aud`` is not checked
    jwt_issuer: str | None = None  #: required ``iss``; unset: ``iss`` is not checked
    jwt_leeway: float = 5.0  #: seconds of clock skew allowed on exp/nbf/iat
    jwt_max_lifetime: float = 86_400.0  #: seconds a token may be valid for (exp - iat), at most
    ssl_certfile: str | None = None  #: PEM certificate chain: serve wss:// (with ssl_keyfile)
    ssl_keyfile: str | None = None  #: PEM private key of ssl_certfile
    quotas: QuotaSettings = QuotaSettings()
    # Admission (docs/security.md, "Connections before and after hello"):
    hello_max_size: int = 16 * 1024  #: bytes a message may have before ``hello`` is accepted (else 1009)
    allowed_origins: tuple[str, ...] = ()  #: browser Origins accepted (``*``: any); no Origin header is always allowed
    trusted_proxies: tuple[str, ...] = ()  #: addresses/networks whose X-Forwarded-For names the client
    max_connections_per_ip: int = 256  #: connections of one IP (IPv6: one /64) over all gateways (4005)
    max_unauthenticated_per_ip: int = 16  #: connections of one IP still before ``hello``, per gateway (4005)
    max_devices_per_user: int = 32  #: connections of one user over all gateways (4005)
    admission_ttl: float = 30.0  #: seconds a dead gateway's connections stay counted (renewed every third of it)
    max_frames_per_second: float = 20.0  #: frames per connection per second, sustained (``rate_limited``)
    frame_burst: int = 40  #: frames a connection may send at once above the rate
    frame_reject_limit: int = 50  #: frames refused in 10 s before the connection is closed 4006
    outbox_bytes: int = 8 << 20  #: bytes queued per connection (the first frame always fits); full pauses too
    slow_consumer_after: float = 10.0  #: seconds a connection may stay paused (outbox full) before 4008
    resync_holdoff: float = 0.25  #: seconds after an attach in which a gap does not re-attach again
    compression: bool = False  #: permessage-deflate (off: it costs CPU per connection, see bench/NOTES.md)
    drain_delay: float = 0.0  #: seconds a stopping gateway keeps serving, not ready, before it closes its sockets
    #: GRAPH, as the workers have it: the gateway reads the graph names (a project file) to check ``send.graph``
    graph: str = "switchboard.worker.graph:graph"
    #: ENCRYPTION_KEYS: seals the text the gateway stores, opens what it delivers (no keys: nothing sealed)
    encryption: Keyring = dataclasses.field(default_factory=Keyring)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        d = cls()
        settings = cls(
            **_common(env),
            quotas=QuotaSettings.from_env(env),
            graph=_get(env, "GRAPH", d.graph),
            ssl_certfile=_get(env, "SSL_CERTFILE", "") or None,
            ssl_keyfile=_get(env, "SSL_KEYFILE", "") or None,
            host=_get(env, "WEBSOCKET_HOST", d.host),
            port=_int(env, "WEBSOCKET_PORT", d.port),
            max_message_size=_int(env, "MAX_MESSAGE_SIZE", d.max_message_size, minimum=1024),
            heartbeat_interval=_float(env, "HEARTBEAT_INTERVAL", d.heartbeat_interval, minimum=0.1),
            hello_timeout=_float(env, "HELLO_TIMEOUT", d.hello_timeout, minimum=0.1),
            jwt_secret=_get(env, "JWT_SECRET", d.jwt_secret),
            replay_window=_int(env, "REPLAY_WINDOW", d.replay_window, minimum=0),
            outbox_size=_int(env, "OUTBOX_SIZE", d.outbox_size, minimum=16),
            dev_mode=_bool(env, "SWITCHBOARD_DEV", d.dev_mode),
            jwt_algorithms=tuple(a.strip() for a in _get(env, "JWT_ALGORITHMS", ",".join(d.jwt_algorithms)).split(",")
                                 if a.strip()),
            jwt_public_key_file=_get(env, "JWT_PUBLIC_KEY_FILE", "") or None,
            jwt_jwks_file=_get(env, "JWT_JWKS_FILE", "") or None,
            jwt_audience=_get(env, "JWT_AUDIENCE", "") or None,
            jwt_issuer=_get(env, "JWT_ISSUER", "") or None,
            jwt_leeway=_float(env, "JWT_LEEWAY", d.jwt_leeway, minimum=0.0),
            jwt_max_lifetime=_float(env, "JWT_MAX_LIFETIME", d.jwt_max_lifetime, minimum=1.0),
            hello_max_size=_int(env, "HELLO_MAX_SIZE", d.hello_max_size, minimum=10 * 1024),
            allowed_origins=_list(env, "ALLOWED_ORIGINS", d.allowed_origins),
            trusted_proxies=_networks(env, "TRUSTED_PROXIES", d.trusted_proxies),
            max_connections_per_ip=_int(env, "MAX_CONNECTIONS_PER_IP", d.max_connections_per_ip, minimum=1),
            max_unauthenticated_per_ip=_int(env, "MAX_UNAUTHENTICATED_PER_IP", d.max_unauthenticated_per_ip,
                                            minimum=1),
            max_devices_per_user=_int(env, "MAX_DEVICES_PER_USER", d.max_devices_per_user, minimum=1),
            admission_ttl=_float(env, "ADMISSION_TTL", d.admission_ttl, minimum=1.0),
            max_frames_per_second=_float(env, "MAX_FRAMES_PER_SECOND", d.max_frames_per_second, minimum=0.1),
            frame_burst=_int(env, "FRAME_BURST", d.frame_burst, minimum=1),
            frame_reject_limit=_int(env, "FRAME_REJECT_LIMIT", d.frame_reject_limit, minimum=1),
            outbox_bytes=_int(env, "OUTBOX_BYTES", d.outbox_bytes, minimum=1024),
            slow_consumer_after=_float(env, "SLOW_CONSUMER_AFTER", d.slow_consumer_after, minimum=0.1),
            resync_holdoff=_float(env, "RESYNC_HOLDOFF", d.resync_holdoff, minimum=0.0),
            compression=_bool(env, "COMPRESSION", d.compression),
            drain_delay=_float(env, "DRAIN_DELAY", d.drain_delay, minimum=0.0),
            encryption=encryption_from_env(env),
        )
        check_jwt(settings)
        return settings


def check_jwt(s: GatewaySettings) -> None:
    """Refuse token settings a gateway must not start with (SettingsError)."""
    algorithms = set(s.jwt_algorithms)
    if not algorithms or "none" in {a.lower() for a in algorithms}:
        raise SettingsError("JWT_ALGORITHMS must name at least one signing algorithm; 'none' is never accepted")
    unknown = algorithms - HMAC_ALGORITHMS - PUBLIC_KEY_ALGORITHMS
    if unknown:
        raise SettingsError(f"JWT_ALGORITHMS: unknown {sorted(unknown)}; use HS256/384/512 or "
                            f"{', '.join(sorted(PUBLIC_KEY_ALGORITHMS))}")
    if algorithms & HMAC_ALGORITHMS and algorithms & PUBLIC_KEY_ALGORITHMS:
        raise SettingsError("JWT_ALGORITHMS mixes HMAC (HS*) and public-key algorithms: a public key would "
                            "then verify forged HS* tokens (algorithm confusion); choose one family")
    key_files = [name for name, value in (("JWT_PUBLIC_KEY_FILE", s.jwt_public_key_file),
                                          ("JWT_JWKS_FILE", s.jwt_jwks_file)) if value]
    if algorithms <= PUBLIC_KEY_ALGORITHMS:
        if len(key_files) != 1:
            raise SettingsError(f"JWT_ALGORITHMS={','.join(s.jwt_algorithms)} needs exactly one of "
                                "JWT_PUBLIC_KEY_FILE and JWT_JWKS_FILE")
        return
    if key_files:
        raise SettingsError(f"{' and '.join(key_files)} need public-key JWT_ALGORITHMS (e.g. RS256 or ES256), "
                            f"not {','.join(s.jwt_algorithms)}")
    if s.jwt_secret == DEV_JWT_SECRET and not s.dev_mode:
        raise SettingsError("JWT_SECRET is the development key, which anyone can read in the source: set "
                            f"JWT_SECRET to at least {MIN_JWT_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`), "
                            "or SWITCHBOARD_DEV=1 for local development only")
    if len(s.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise SettingsError(f"JWT_SECRET is {len(s.jwt_secret.encode())} bytes; HMAC keys need at least "
                            f"{MIN_JWT_SECRET_BYTES} (e.g. `openssl rand -hex 32`)")


@dataclass(frozen=True)
class WorkerSettings:
    redis: RedisSettings = RedisSettings()
    streams: StreamSettings = StreamSettings()
    server_id: str = dataclasses.field(default_factory=default_server_id)
    health: HealthSettings = HealthSettings()
    nodes: NodeSettings = NodeSettings()
    graph: str = "switchboard.worker.graph:graph"
    checkpoint_ttl: float | None = None  #: minutes; None keeps checkpoints forever
    checkpoint_cache: int = 256  #: conversations whose newest checkpoint stays in memory (0: none)
    checkpoint_keep: int = 20  #: checkpoints kept per conversation (0: all)
    concurrency: int = 64  #: turns run at once by one worker (slots shared fairly between users)
    read_ahead: int = 256  #: conversations taken beyond those running, waiting for a slot (> MAX_UNANSWERED)
    turn_timeout: float = 60.0  #: seconds one graph run may take
    lease_ttl: float = 15.0  #: seconds a conversation lease lives without renewal
    claim_idle: float = 15.0  #: seconds before a dead worker's work is claimed
    read_block: float = 2.0  #: seconds XREADGROUP blocks (below the socket timeout)
    max_attempts: int = 3  #: attempts at one message before it is dead-lettered
    dead_letter_maxlen: int = 10_000  #: dead-letter entries kept
    dead_letters_per_user: int = 10  #: whole copies of a user's dead-lettered messages kept for a retry (0: none)
    shutdown_grace: float = 25.0  #: seconds running turns get to finish on SIGTERM
    stream_deltas: bool = True  #: stream chat models' tokens to devices as ``delta`` events
    delta_interval: float = 0.05  #: seconds between a reply's delta writes after its first
    #: ENCRYPTION_KEYS: opens inbound text and checkpoints, seals replies, deltas, dead letters, checkpoints
    encryption: Keyring = dataclasses.field(default_factory=Keyring)

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
            read_ahead=_int(env, "WORKER_READ_AHEAD", d.read_ahead, minimum=0),
            turn_timeout=_float(env, "TURN_TIMEOUT", d.turn_timeout, minimum=0.1),
            lease_ttl=_float(env, "LEASE_TTL", d.lease_ttl, minimum=0.5),
            claim_idle=_float(env, "CLAIM_IDLE", d.claim_idle, minimum=0.5),
            max_attempts=_int(env, "MAX_ATTEMPTS", d.max_attempts, minimum=1),
            dead_letter_maxlen=_int(env, "DEAD_LETTER_MAXLEN", d.dead_letter_maxlen, minimum=10),
            dead_letters_per_user=_int(env, "DEAD_LETTERS_PER_USER", d.dead_letters_per_user, minimum=0),
            shutdown_grace=_float(env, "SHUTDOWN_GRACE", d.shutdown_grace, minimum=0.0),
            stream_deltas=_bool(env, "STREAM_DELTAS", d.stream_deltas),
            delta_interval=_float(env, "DELTA_INTERVAL", d.delta_interval, minimum=0.0),
            encryption=encryption_from_env(env),
        )


@dataclass(frozen=True)
class FanoutSettings:
    redis: RedisSettings = RedisSettings()
    streams: StreamSettings = StreamSettings()
    server_id: str = dataclasses.field(default_factory=default_server_id)
    health: HealthSettings = HealthSettings()
    nodes: NodeSettings = NodeSettings()
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
