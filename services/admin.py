"""``switchboard inspect USER``: everything Redis holds about one user, to
answer "what happened to this message?".

:func:`read_user` is the one place that reads (as the operator, ``sb-admin``;
only that user's keys, found by their ``{u:USER}`` hash tag, and the
dead-letter stream), :func:`format_report` turns what it read into text and
is pure. Nothing is written.

What it shows: every key of the user with its type, size and time to live;
the outbound stream (length, first and last ids, epoch, newest trimmed id);
each conversation (its progress -- ``done`` against ``last`` says whether
messages wait -- the messages waiting in its inbound stream, the lease and
its time left, attempts at a failing message); the devices with the gateway
holding each and their acked positions; the quota state; the user's
checkpoint keys by kind; and the user's dead letters (among the newest
``--dead-letters`` of the stream).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from switchboard.gateway.resume import parse_offset
from switchboard.shared import keys, nodes
from switchboard.shared.fields import ConvField, MetaField, UsageField

#: How many of the newest dead letters are searched for the user's.
DEAD_LETTERS_SEARCHED = 10_000


@dataclass(frozen=True)
class KeyInfo:
    key: str
    type: str
    size: int  #: entries of a stream, hash, set or sorted set; bytes of a string or JSON document
    ttl_s: float | None  #: None: no expiry


@dataclass(frozen=True)
class ConversationInfo:
    id: str
    done: str | None  #: the last answered inbound entry
    last: str | None  #: the newest accepted inbound entry
    count: int  #: messages ever accepted
    waiting: int  #: entries in its inbound stream (accepted, not yet answered)
    lease_ttl_s: float | None  #: a worker holds it now (None: no lease)
    attempts: int  #: attempts at the entry ``attempt_of``
    attempt_of: str | None
    updated_ms: int | None  #: its score in the user's conversation index


@dataclass
class UserReport:
    user: str
    at_ms: int
    keys: list[KeyInfo] = field(default_factory=list)
    outbound: dict[str, Any] = field(default_factory=dict)
    conversations: list[ConversationInfo] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, str] = field(default_factory=dict)
    checkpoints: dict[str, int] = field(default_factory=dict)  #: key kind -> count
    dead_letters: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _size(client, key: str, kind: str) -> int:  # noqa: ANN001
    sizes = {"stream": client.xlen, "hash": client.hlen, "set": client.scard, "zset": client.zcard,
             "string": client.strlen, "list": client.llen}
    if kind in sizes:
        return int(sizes[kind](key))
    return int(client.memory_usage(key, samples=0) or 0)  # a JSON document (ReJSON-RL): its bytes


def _ttl(ms: int) -> float | None:
    return None if ms < 0 else round(ms / 1000, 1)


def read_user(client, user: str, *, dead_letters: int = DEAD_LETTERS_SEARCHED) -> UserReport:  # noqa: ANN001
    """Read what Redis holds about ``user`` (a synchronous client, replies decoded)."""
    report = UserReport(user, int(time.time() * 1000))
    tag = f"{{u:{user}}}"
    own = sorted(client.scan_iter(match=f"{keys.PREFIX}:{tag}:*", count=1000))
    for key in own:
        kind = client.type(key)
        report.keys.append(KeyInfo(key, kind, _size(client, key, kind), _ttl(client.pttl(key))))
    for key in client.scan_iter(match=f"*{tag}/*", count=1000):  # the user's threads' checkpoints
        kind = key.split(":", 1)[0]
        report.checkpoints[kind] = report.checkpoints.get(kind, 0) + 1
    out = keys.outbound(user)
    if client.exists(out):
        first = client.xrange(out, count=1)
        last = client.xrevrange(out, count=1)
        meta = client.hgetall(keys.meta(user))
        report.outbound = {"length": client.xlen(out), "first": first[0][0] if first else None,
                           "last": last[0][0] if last else None, "epoch": meta.get(MetaField.EPOCH),
                           "trimmed": meta.get(MetaField.TRIMMED)}
    index = dict(client.zrange(keys.conversations(user), 0, -1, withscores=True))
    prefix = keys.conversation(user, "")
    conversation_ids = {key[len(prefix):] for key in own if key.startswith(prefix)} | set(index)
    for conversation in sorted(conversation_ids):
        progress = client.hgetall(keys.conversation(user, conversation))
        lease_ms = client.pttl(keys.lease(user, conversation))
        score = index.get(conversation)
        report.conversations.append(ConversationInfo(
            conversation, progress.get(ConvField.DONE), progress.get(ConvField.LAST),
            int(progress.get(ConvField.COUNT, 0)), int(client.xlen(keys.inbound(user, conversation))),
            _ttl(lease_ms) if lease_ms >= 0 else None, int(progress.get(ConvField.ATTEMPTS, 0)),
            progress.get(ConvField.ATTEMPT_OF), int(score) if score is not None else None))
    offsets = client.hgetall(keys.offsets(user))

    def position(device: str) -> dict[str, str | None]:
        acked = parse_offset(offsets.pop(device, None))  # "<epoch>|<id>"
        return {"acked": acked[1] if acked else None, "acked_epoch": acked[0] if acked else None}

    for device in nodes.user_devices_sync(client, user):
        report.devices.append({**device.as_json(), **position(device.device)})
    for device in sorted(offsets):  # positions of devices not connected now
        report.devices.append({"device": device, "connected": False, **position(device)})
    report.usage = client.hgetall(keys.usage(user))
    for entry_id, fields in client.xrevrange(keys.dead_letters(), count=dead_letters):
        if fields.get("user") == user:
            report.dead_letters.append({"id": entry_id, **{k: v for k, v in fields.items() if k != "text"}})
    report.dead_letters.reverse()
    return report


def format_report(report: UserReport) -> str:
    """The report as text for a person."""
    lines = [f"user {report.user}"]
    if not report.keys and not report.checkpoints:
        return lines[0] + ": nothing stored\n"
    o = report.outbound
    if o:
        lines.append(f"  events: {o['length']} ({o['first']} .. {o['last']}), epoch {o['epoch']}"
                     + (f", trimmed up to {o['trimmed']}" if o.get("trimmed") else ""))
    lines.append(f"  conversations: {len(report.conversations)}")
    for c in report.conversations:
        state = "idle" if c.waiting == 0 else f"{c.waiting} waiting"
        lease = f", leased ({c.lease_ttl_s} s left)" if c.lease_ttl_s is not None else ""
        failing = f", {c.attempts} attempts at {c.attempt_of}" if c.attempts else ""
        lines.append(f"    {c.id}: {c.count} messages, answered up to {c.done or '-'}, newest {c.last or '-'}, "
                     f"{state}{lease}{failing}")
    lines.append(f"  devices: {len(report.devices)}")
    for d in report.devices:
        where = (f"on gateway {d.get('gateway') or '?'}" if d.get("live")
                 else "not connected" if d.get("connected") is False else "slot expired")
        lines.append(f"    {d['device']}: {where}, acked {d.get('acked') or '-'}")
    usage = report.usage
    if usage:
        lines.append(f"  quota: {usage.get(UsageField.WAITING, '0')} unanswered")
    if report.checkpoints:
        lines.append("  checkpoints: " + ", ".join(f"{n} {kind}" for kind, n in sorted(report.checkpoints.items())))
    lines.append(f"  dead letters: {len(report.dead_letters)}")
    for dl in report.dead_letters:
        lines.append(f"    {dl['id']}: conversation {dl.get('conv')}, message {dl.get('cmid')} "
                     f"after {dl.get('attempts')} attempts (worker {dl.get('worker')})")
    lines.append("  keys:")
    for k in report.keys:
        ttl = "no expiry" if k.ttl_s is None else f"expires in {k.ttl_s} s"
        lines.append(f"    {k.key}  {k.type} {k.size}  {ttl}")
    return "\n".join(lines) + "\n"


def cmd_inspect(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``switchboard inspect USER [--json]``."""
    import msgspec
    from redis.exceptions import RedisError

    from switchboard.shared.connection import make_sync_client
    from switchboard.shared.protocol import Name
    from switchboard.shared.settings import RedisSettings, SettingsError

    try:
        msgspec.convert(args.user, Name)
    except msgspec.ValidationError:
        raise SettingsError(f"{args.user!r} is not a user id (1-128 of A-Z a-z 0-9 _ . : @ -)") from None
    client = make_sync_client(RedisSettings.from_env(env))  # as the operator: REDIS_USERNAME=sb-admin
    try:
        report = read_user(client, args.user, dead_letters=args.dead_letters)
    except (RedisError, OSError) as exc:
        print(f"switchboard: cannot read from Redis: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        sys.stdout.write(format_report(report))
    return 0
