"""Who may connect and how many: Origin, connections per client address,
connections not yet past ``hello``, and devices per user.

- :func:`origin_allowed` and :func:`ip_key` are pure decisions.
- :class:`LocalCounts` counts this gateway's connections still before
  ``hello`` per address: it needs no Redis because what it bounds -- the
  memory and the Redis work an unauthenticated socket costs -- is this
  process's own, and it is checked before anything else, at no cost.
- :class:`AdmissionStore` holds the slots that all gateways share, in Redis,
  one script each (``shared/lua``: ``admit_ip``, ``admit_device``,
  ``renew_device``, ``release_device``): a sorted set per address and per
  user whose members are scored by an expiry the gateway holding them renews
  every ``ADMISSION_TTL / 3`` seconds. A gateway killed with -9 renews
  nothing, so its slots expire within ``ADMISSION_TTL`` and the next
  admission drops them; nothing is counted forever. A device's owner entry
  names the gateway beside the connection (``shared.nodes.owner_value``),
  written by the same script, so ``switchboard devices USER`` says where
  each device is at no extra cost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from switchboard.shared import keys, scripts
from switchboard.shared.nodes import owner_value, parse_owner
from switchboard.shared.connection import execute_scripted, queue_script
from switchboard.shared.tasks import wait_event

log = logging.getLogger(__name__)

#: An IPv6 client is counted by its /64: one host usually owns a whole /64,
#: so a per-address cap on IPv6 would cap nothing.
IPV6_PREFIX = 64


def ip_key(address: str | None) -> str:
    """The client address a per-IP cap counts: an IPv4 address, or the /64
    network of an IPv6 one (an IPv4-mapped IPv6 address counts as its IPv4)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[str]) -> str | None:
    """The client's address: the socket's peer, unless the peer is a
    trusted proxy (``TRUSTED_PROXIES``: addresses or networks), then the
    rightmost ``X-Forwarded-For`` address that is not a trusted proxy itself
    (each proxy appends the address it got the request from, so addresses
    left of the first untrusted one may be forged by the client)."""
    if not trusted or peer is None:
        return peer
    networks = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in network for network in networks)

    if not is_trusted(peer):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else peer


def origin_allowed(origin: str | None, allowed: Sequence[str], host: str | None = None) -> bool:
    """Whether a handshake with this ``Origin`` header may proceed.

    No header: a non-browser client (browsers always send one on a
    WebSocket handshake), allowed -- a token is what authenticates it. A
    browser's Origin must be in ``allowed`` exactly (scheme, host, port, as
    the browser writes it), or ``allowed`` contains ``*``, or it is the
    origin the request was addressed to (:func:`same_origin` with ``host``,
    the ``Host`` header): the gateway's own page (``/``, docs/web-client.md).
    Otherwise -- the default, an empty list -- a browser origin is refused:
    a page on another site must not be able to drive a user's browser into
    the service."""
    if origin is None:
        return True
    return "*" in allowed or origin in allowed or same_origin(origin, host)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names the host and port
    of the ``Host`` header ``host``. A browser writes Host itself (a page
    cannot set it), so a match means the page came from this address -- or
    from a proxy in front of it that passes the browser's Host on unchanged
    (nginx: ``proxy_set_header Host $http_host``). The scheme is not
    compared: behind a proxy that ends TLS, the page is https and the
    gateway's socket is plain; a port left out is the scheme's default."""
    if not host:
        return False
    scheme, separator, rest = origin.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in _DEFAULT_PORTS or not rest or "/" in rest:
        return False
    wanted = _host_port(rest, _DEFAULT_PORTS[scheme])
    return wanted is not None and wanted == _host_port(host.strip(), _DEFAULT_PORTS[scheme])


def _host_port(authority: str, default: int) -> tuple[str, int] | None:
    """``(host, port)`` of ``host[:port]`` (IPv6 in brackets), lowercased; None if malformed."""
    if "@" in authority:
        return None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        name, tail = authority[:end + 1], authority[end + 1:]
        if tail and not tail.startswith(":"):
            return None
        port_text = tail[1:] if tail else ""
    else:
        name, _, port_text = authority.partition(":")
        if ":" in port_text:
            return None
    if not name:
        return None
    if not port_text:
        return name.lower(), default
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        return None
    return name.lower(), int(port_text)


class LocalCounts:
    """Counts per key with a cap, in this process."""

    def __init__(self, cap: int):
        self.cap = cap
        self.counts: Counter[str] = Counter()

    def enter(self, key: str) -> bool:
        """Count one more for ``key``; False (and nothing counted) at the cap."""
        if self.counts[key] >= self.cap:
            return False
        self.counts[key] += 1
        return True

    def leave(self, key: str) -> None:
        self.counts[key] -= 1
        if self.counts[key] <= 0:
            del self.counts[key]


@dataclasses.dataclass(frozen=True)
class Admitted:
    previous: str | None = None  #: the connection whose device slot this one took over


@dataclasses.dataclass(frozen=True)
class Refused:
    count: int  #: slots held when the cap refused this one


@dataclasses.dataclass(frozen=True)
class Slot:
    """What one admitted connection holds, renewed while it lives."""

    conn: str
    ip: str
    user: str | None = None
    device: str | None = None


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class AdmissionStore:
    """The shared slots, in Redis. ``ttl``: seconds a slot lives unrenewed;
    ``gateway``: this gateway's SERVER_ID, recorded with each device's
    connection (None: the connection id alone)."""

    def __init__(self, redis: aioredis.Redis, ttl: float, gateway: str | None = None):
        self.redis = redis
        self.ttl = ttl
        self.gateway = gateway
        registered = scripts.register(redis, "admit_ip", "admit_device", "renew_device", "release_device")
        self._admit_ip = registered["admit_ip"]
        self._admit_device = registered["admit_device"]
        self._renew_device = registered["renew_device"]
        self._release_device = registered["release_device"]

    def _times(self) -> tuple[int, int, int]:
        now = _ms(time.time())
        return now, now + _ms(self.ttl), _ms(self.ttl) * 2

    async def admit_ip(self, ip: str, conn: str, cap: int) -> Admitted | Refused:
        now, expiry, key_ttl = self._times()
        ok, count = await self._admit_ip(keys=[keys.ip_connections(ip)], args=[conn, now, expiry, cap, key_ttl])
        return Admitted() if ok else Refused(int(count))

    async def release_ip(self, ip: str, conn: str) -> None:
        await self.redis.zrem(keys.ip_connections(ip), conn)

    async def admit_device(self, user: str, device: str, conn: str, cap: int) -> Admitted | Refused:
        now, expiry, key_ttl = self._times()
        ok, detail = await self._admit_device(keys=[keys.devices(user), keys.device_owners(user)],
                                              args=[device, self._owner(conn), now, expiry, cap, key_ttl])
        if not ok:
            return Refused(int(detail))
        # The previous connection may be another gateway's: its id is what counts here.
        return Admitted(previous=parse_owner(detail)[0] if detail else None)

    def _owner(self, conn: str) -> str:
        """The owner value the scripts store and compare (``device_owners``)."""
        return owner_value(conn, self.gateway)

    async def release_device(self, user: str, device: str, conn: str) -> bool:
        """Free the device's slot if this connection holds it."""
        return bool(await self._release_device(keys=[keys.devices(user), keys.device_owners(user)],
                                               args=[device, self._owner(conn)]))

    async def renew(self, slots: Sequence[Slot], device_cap: int) -> list[str]:
        """Renew every slot of ``slots`` in one round trip; return the
        connections that lost their device slot (another connection of the
        device took it over, or it expired and the user is at the cap)."""
        if not slots:
            return []
        now, expiry, key_ttl = self._times()
        with_device = [s for s in slots if s.user is not None and s.device is not None]

        def fill(pipe: aioredis.client.Pipeline) -> None:
            for s in with_device:
                queue_script(pipe, self._renew_device, [keys.devices(s.user), keys.device_owners(s.user)],
                             [s.device, self._owner(s.conn), now, expiry, device_cap, key_ttl])
            for s in slots:
                # A slot pruned meanwhile is added back: the connection is alive.
                pipe.zadd(keys.ip_connections(s.ip), {s.conn: expiry})
                pipe.pexpire(keys.ip_connections(s.ip), key_ttl)

        replies = await execute_scripted(self.redis, [self._renew_device], fill)
        return [s.conn for s, held in zip(with_device, replies[:len(with_device)]) if not held]


#: Connections whose slots one pipeline renews (two commands each).
RENEW_CHUNK = 500


class Registry:
    """This gateway's admitted connections, and the renewal that keeps their
    slots alive: every ``ttl / 3`` seconds one pipeline renews all of them,
    and a connection that lost its device slot is handed to ``lost``."""

    def __init__(self, store: AdmissionStore, device_cap: int):
        self.store = store
        self.device_cap = device_cap
        self.slots: dict[str, Slot] = {}
        self.on_lost: dict[str, Callable[[], None]] = {}

    def add(self, slot: Slot, on_lost: Callable[[], None]) -> None:
        self.slots[slot.conn] = slot
        self.on_lost[slot.conn] = on_lost

    def update(self, slot: Slot) -> None:
        if slot.conn in self.slots:
            self.slots[slot.conn] = slot

    def remove(self, conn: str) -> Slot | None:
        self.on_lost.pop(conn, None)
        return self.slots.pop(conn, None)

    def lose(self, conn: str) -> None:
        """The connection lost its slot: end it (once)."""
        callback = self.on_lost.pop(conn, None)
        if callback is not None:
            callback()

    async def renew_once(self) -> None:
        """Renew every slot, RENEW_CHUNK connections per round trip (so no
        one pipeline holds Redis for long)."""
        slots = list(self.slots.values())
        for first in range(0, len(slots), RENEW_CHUNK):
            for conn in await self.store.renew(slots[first:first + RENEW_CHUNK], self.device_cap):
                self.lose(conn)

    async def run(self, stop: asyncio.Event) -> None:
        """Renew until ``stop`` is set; a failed round is logged and retried
        at the next (slots outlive two missed rounds)."""
        interval = self.store.ttl / 3
        while not await wait_event(stop, interval):
            try:
                await self.renew_once()
            except (RedisError, OSError) as exc:
                log.warning("renewing %d connection slots failed: %s", len(self.slots), exc)
