"""Who is where: the live nodes of every tier, and the gateway each device is on.

*Membership* (:class:`Membership`) is the one pattern for "who is alive" in
Redis: a set of member ids, and per member a key with a TTL that the member
renews; a member that stops renewing (killed with -9) is gone when its key
expires, and the first reader that finds its key missing removes it from the
set (else the set would grow with every pod that ever died). The fanouts'
announcement to the gateways (``keys.fanout_members`` / ``keys.fanout_alive``,
holding the incarnation the gateways re-attach on) is one instance of it; the
node registry is another, per tier.

*The node registry* (:class:`NodeRegistry`): every gateway, worker and fanout
keeps a small JSON record (:class:`NodeRecord`: tier, id, host, pid, start
time, version, and what it is doing -- a gateway's connections, a worker's
running turns and slots, a fanout's users) in ``keys.node(tier, id)``,
renewed every ``NODE_HEARTBEAT`` seconds with a TTL of ``NODE_TTL``, and its
id in ``keys.node_members(tier)``. A clean stop removes both at once; a
``kill -9`` is visible within ``NODE_TTL``. ``switchboard nodes`` reads them
(:func:`list_nodes`); a record's age is measured from its TTL (``ttl -
PTTL``), so it needs no agreement between the clocks of the machines.

*Devices*: a gateway admits a device's connection into ``keys.devices(user)``
and ``keys.device_owners(user)`` (``shared/lua/admit_device.lua``); the
owner it writes is :func:`owner_value` -- the connection id and the gateway's
``SERVER_ID`` -- so :func:`user_devices` says which gateway holds each of a
user's devices without any write of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import cluster, keys
from .settings import NodeSettings
from .tasks import wait_event

log = logging.getLogger(__name__)

#: The tiers that register, in the order ``switchboard nodes`` lists them.
TIERS = ("gateway", "worker", "fanout")

#: A node prunes its tier's member set of expired members every this many heartbeats.
PRUNE_EVERY = 5

#: Separates the connection id from the gateway id in a device's owner value
#: (connection ids are hex; a gateway id may hold anything after it).
OWNER_SEPARATOR = "|"

Detail = int | float | str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def expired_members(members: Sequence[str], values: Sequence[Any]) -> list[str]:
    """The members whose key read as missing (``None``), in order."""
    return [member for member, value in zip(members, values) if value is None]


class Membership:
    """A set of members, each alive while its own key (with a TTL) exists.

    ``members`` is the set's key; ``key_of(member)`` is a member's key. Both
    :meth:`announce` (``SET ... PX``, then ``SADD``) and :meth:`leave` are one
    round trip. A member that was pruned while it was only late to renew is
    added again by its next announcement."""

    def __init__(self, redis: aioredis.Redis, members: str, key_of: Callable[[str], str]):
        self.redis = redis
        self.members = members
        self.key_of = key_of

    async def announce(self, member: str, value: str, ttl: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.key_of(member), value, px=max(1, int(ttl * 1000)))
        pipe.sadd(self.members, member)
        await pipe.execute()

    async def leave(self, member: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.key_of(member))
        pipe.srem(self.members, member)
        await pipe.execute()

    async def live(self) -> dict[str, str]:
        """Every member whose key exists -> its key's value (sorted by member)."""
        members = sorted(_text(m) for m in await self.redis.smembers(self.members))
        if not members:
            return {}
        values = await cluster.mget(self.redis, [self.key_of(m) for m in members])
        return {m: _text(v) for m, v in zip(members, values) if v is not None}

    async def forget_expired(self) -> list[str]:
        """Remove the members whose key has expired; return them."""
        members = sorted(_text(m) for m in await self.redis.smembers(self.members))
        if not members:
            return []
        dead = expired_members(members, await cluster.mget(self.redis, [self.key_of(m) for m in members]))
        if dead:
            await self.redis.srem(self.members, *dead)
        return dead


# -- node records -------------------------------------------------------------------------


class NodeRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a node says about itself at each heartbeat (JSON in ``keys.node``)."""

    tier: str
    id: str
    host: str
    pid: int
    started: float  #: Unix time the process started its service
    version: str
    ttl: float  #: NODE_TTL the record was written with (its age is ``ttl`` - PTTL)
    #: tier-specific figures: a gateway's ``connections``, a worker's
    #: ``running`` turns of ``slots``, a fanout's ``users`` ...
    details: dict[str, Detail] = {}


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(NodeRecord)


def encode_record(record: NodeRecord) -> str:
    return _encoder.encode(record).decode()


def decode_record(raw: bytes | str) -> NodeRecord | None:
    """A record as stored, or None when it is not one (written by something else)."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Node:
    """One node of a listing: its record (None if unreadable) and how many
    seconds ago it last renewed it."""

    tier: str
    id: str
    age: float
    record: NodeRecord | None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = msgspec.to_builtins(self.record) if self.record is not None else {
            "tier": self.tier, "id": self.id, "unreadable": True}
        body["age"] = round(self.age, 3)
        return body


def node_from(tier: str, node_id: str, raw: bytes | str | None, pttl_ms: int) -> Node | None:
    """The listing entry of a member from its key's value and PTTL; None when
    the key is gone (expired between the two reads)."""
    if raw is None or pttl_ms == -2:
        return None
    record = decode_record(raw)
    ttl = record.ttl if record is not None else 0.0
    age = max(0.0, ttl - pttl_ms / 1000) if pttl_ms >= 0 else 0.0
    return Node(tier, node_id, age, record)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("switchboard")
    except metadata.PackageNotFoundError:
        return "unknown"


class NodeRegistry:
    """This process's record in the node registry, kept alive by :meth:`run`.

    ``details`` is called at every heartbeat for the tier's figures."""

    def __init__(self, redis: aioredis.Redis, settings: NodeSettings, tier: str, node_id: str,
                 details: Callable[[], Mapping[str, Detail]] = dict):
        self.settings = settings
        self.tier = tier
        self.id = node_id
        self.details = details
        self.membership = Membership(redis, keys.node_members(tier), functools.partial(keys.node, tier))
        self.started = time.time()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.version = _version()
        self.beats = 0

    def record(self) -> NodeRecord:
        return NodeRecord(tier=self.tier, id=self.id, host=self.host, pid=self.pid, started=round(self.started, 3),
                          version=self.version, ttl=self.settings.ttl, details=dict(self.details()))

    async def heartbeat(self) -> None:
        """Write the record (and membership); every PRUNE_EVERY heartbeats,
        also forget the tier's members that expired."""
        await self.membership.announce(self.id, encode_record(self.record()), self.settings.ttl)
        if self.beats % PRUNE_EVERY == 0:
            gone = await self.membership.forget_expired()
            if gone:
                log.info("forgetting %s nodes that stopped renewing: %s", self.tier, ", ".join(gone))
        self.beats += 1

    async def leave(self) -> None:
        await self.membership.leave(self.id)

    async def run(self, stop: asyncio.Event) -> None:
        """Register now, renew every NODE_HEARTBEAT until ``stop`` is set, then
        leave at once (a stopping node is gone from the listing while it
        finishes). A failed renewal is logged and retried at the next: the
        record outlives two missed renewals with the default NODE_TTL."""
        try:
            while not stop.is_set():
                try:
                    await self.heartbeat()
                except (RedisError, OSError) as exc:
                    log.warning("renewing the node record of %s %s failed: %s", self.tier, self.id, exc)
                if await wait_event(stop, self.settings.heartbeat):
                    break
        finally:
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self.leave())


async def list_nodes(redis: aioredis.Redis, tiers: Sequence[str] = TIERS) -> dict[str, list[Node]]:
    """Every live node by tier (sorted by id), in two round trips."""
    pipe = redis.pipeline(transaction=False)
    for tier in tiers:
        pipe.smembers(keys.node_members(tier))
    found = [(tier, node_id) for tier, members in zip(tiers, await pipe.execute())
             for node_id in sorted(_text(m) for m in members)]
    listing: dict[str, list[Node]] = {tier: [] for tier in tiers}
    if not found:
        return listing
    pipe = redis.pipeline(transaction=False)
    for tier, node_id in found:
        pipe.get(keys.node(tier, node_id))
        pipe.pttl(keys.node(tier, node_id))
    replies = await pipe.execute()
    for index, (tier, node_id) in enumerate(found):
        node = node_from(tier, node_id, replies[2 * index], replies[2 * index + 1])
        if node is not None:
            listing[tier].append(node)
    return listing


# -- devices ------------------------------------------------------------------------------


def owner_value(connection: str, gateway: str | None) -> str:
    """What a device's entry in ``keys.device_owners`` holds: the connection
    id, and the id of the gateway holding it (when it records itself)."""
    return connection if gateway is None else f"{connection}{OWNER_SEPARATOR}{gateway}"


def parse_owner(value: str) -> tuple[str, str | None]:
    """``(connection id, gateway id or None)`` of an owner value."""
    connection, separator, gateway = value.partition(OWNER_SEPARATOR)
    return connection, (gateway if separator else None)


@dataclass(frozen=True)
class DeviceSlot:
    """One of a user's devices as the admission keys hold it."""

    device: str
    connection: str | None  #: None: the slot has no owner entry (between two scripts' writes: never)
    gateway: str | None  #: the SERVER_ID of the gateway holding it (None: not recorded)
    expires_ms: int  #: when the slot expires unless its gateway renews it (Unix ms)
    live: bool  #: False: past its expiry, its gateway stopped renewing (the next admission drops it)

    def as_json(self) -> dict[str, Any]:
        return {"device": self.device, "connection": self.connection, "gateway": self.gateway,
                "expires_ms": self.expires_ms, "live": self.live}


def devices_from(slots: Sequence[tuple[Any, float]], owners: Mapping[Any, Any], now_ms: int) -> list[DeviceSlot]:
    """A user's devices from ``ZRANGE devices WITHSCORES`` and ``HGETALL
    device_owners`` as read at ``now_ms``, sorted by device."""
    owner_of = {_text(k): _text(v) for k, v in owners.items()}
    out = []
    for member, score in slots:
        device = _text(member)
        connection, gateway = parse_owner(owner_of[device]) if device in owner_of else (None, None)
        out.append(DeviceSlot(device, connection, gateway, int(score), int(score) > now_ms))
    return sorted(out, key=lambda d: d.device)


async def user_devices(redis: aioredis.Redis, user: str, *, now_ms: int | None = None) -> list[DeviceSlot]:
    """A user's connected devices and the gateway each is on, in one round
    trip (both keys share the user's slot). Slots past their expiry are
    included with ``live=False``: their gateway died, and the user's next
    admission drops them."""
    pipe = redis.pipeline(transaction=False)
    pipe.zrange(keys.devices(user), 0, -1, withscores=True)
    pipe.hgetall(keys.device_owners(user))
    slots, owners = await pipe.execute()
    return devices_from(slots, owners, int(time.time() * 1000) if now_ms is None else now_ms)


def user_devices_sync(redis, user: str, *, now_ms: int | None = None) -> list[DeviceSlot]:  # noqa: ANN001
    """:func:`user_devices` for a synchronous ``redis.Redis`` client (command-line tools)."""
    pipe = redis.pipeline(transaction=False)
    pipe.zrange(keys.devices(user), 0, -1, withscores=True)
    pipe.hgetall(keys.device_owners(user))
    slots, owners = pipe.execute()
    return devices_from(slots, owners, int(time.time() * 1000) if now_ms is None else now_ms)


# -- presentation ---------------------------------------------------------------------------

_DETAIL_ORDER = ("connections", "running", "slots", "taken", "users", "attachments")


def _details(record: NodeRecord) -> str:
    names = sorted(record.details, key=lambda n: (_DETAIL_ORDER.index(n) if n in _DETAIL_ORDER else 99, n))
    return " ".join(f"{name}={record.details[name]}" for name in names)


def format_nodes(listing: Mapping[str, Sequence[Node]], now: float | None = None) -> str:
    """The text table of ``switchboard nodes``: one line per node, by tier."""
    now = time.time() if now is None else now
    rows = [("TIER", "ID", "HOST", "PID", "UP", "HEARTBEAT", "VERSION", "DETAILS")]
    for tier, nodes in listing.items():
        for node in nodes:
            r = node.record
            if r is None:
                rows.append((tier, node.id, "?", "?", "?", f"{node.age:.1f}s ago", "?", "(unreadable record)"))
                continue
            rows.append((tier, node.id, r.host, str(r.pid), _duration(now - r.started), f"{node.age:.1f}s ago",
                         r.version, _details(r)))
    if len(rows) == 1:
        return "no live nodes\n"
    return _table(rows)


def format_devices(user: str, devices: Sequence[DeviceSlot], live_gateways: set[str]) -> str:
    """The text table of ``switchboard devices USER``."""
    if not devices:
        return f"no devices of {user} are connected\n"
    rows = [("DEVICE", "GATEWAY", "CONNECTION", "STATE")]
    for d in devices:
        if not d.live:
            state = "expired (its gateway stopped renewing)"
        elif d.gateway is not None and d.gateway not in live_gateways:
            state = "gateway not registered"
        else:
            state = "connected"
        rows.append((d.device, d.gateway or "?", d.connection or "?", state))
    return _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
