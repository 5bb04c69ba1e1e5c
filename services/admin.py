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
from switchboard.shared import keys, nodes, scripts
from switchboard.shared.fields import ConvField, MetaField, UsageField, WorkField

#: How many of the newest dead letters are searched for the user's.
DEAD_LETTERS_SEARCHED = 10_000
#: Entries of a stream read per round trip (export, erasure).
PAGE = 1000


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


# -- deadletters retry ---------------------------------------------------------------


@dataclass(frozen=True)
class Retried:
    """The message is queued again as inbound entry ``id``; a worker answers it."""

    user: str
    conversation: str
    client_msg_id: str
    id: str


@dataclass(frozen=True)
class NotRetried:
    """Nothing was queued; ``reason`` says why, for the operator."""

    reason: str


def retry_dead_letter(client, dead_letter_id: str, *, work_shards: int, retention_ms: int) -> Retried | NotRetried:  # noqa: ANN001
    """Queue the message of dead letter ``dead_letter_id`` again, once.

    The dead letter names the whole copy of its message kept in the user's
    slot (``kept``); ``retry.lua`` turns that copy into a new inbound entry
    of its conversation and removes it in one step, so a second retry
    queues nothing. Then the work notice, then the dead letter itself is
    deleted: a retried message is no longer dead (and should its answer fail
    again, the worker writes a new dead letter). A retry cut short after the
    script is finished by running it again: the copy is gone, and the dead
    letter is deleted then."""
    found = client.xrange(keys.dead_letters(), dead_letter_id, dead_letter_id)
    if not found:
        return NotRetried(f"no dead letter {dead_letter_id} (already retried, never written, or dropped by "
                          "DEAD_LETTER_MAXLEN)")
    fields = found[0][1]
    user, conversation, entry = fields.get("user", ""), fields.get("conv", ""), fields.get("entry", "")
    kept = fields.get("kept")
    if not kept:
        return NotRetried(f"dead letter {dead_letter_id} keeps no copy of its message (written with "
                          "DEAD_LETTERS_PER_USER=0); it cannot be retried")
    retry = scripts.register(client, "retry")["retry"]
    reply = retry(keys=[keys.dead_copies(user), keys.inbound(user, conversation), keys.conversation(user, conversation),
                        keys.conversations(user), keys.usage(user)],
                  args=[kept, conversation, entry, retention_ms])
    if reply[0] == "gone":
        client.xdel(keys.dead_letters(), dead_letter_id)  # a retry cut short before it could delete it
        return NotRetried(f"the message of dead letter {dead_letter_id} is no longer kept: retried already, or "
                          f"gone with the user's keys (CHECKPOINT_TTL) or beyond DEAD_LETTERS_PER_USER; the dead "
                          "letter is removed")
    if reply[0] == "mismatch":
        return NotRetried(f"dead letter {dead_letter_id} names copy {kept}, which holds another message "
                          f"({reply[1]}/{reply[2]}); nothing queued")
    client.xadd(keys.work(keys.work_shard(user, work_shards)), {WorkField.USER: user, WorkField.CONV: conversation})
    client.xdel(keys.dead_letters(), dead_letter_id)
    return Retried(user, conversation, fields.get("cmid", ""), reply[1])


def cmd_deadletters_retry(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``switchboard deadletters retry ID``."""
    from redis.exceptions import RedisError

    from switchboard.shared.connection import make_sync_client
    from switchboard.shared.settings import RedisSettings, StreamSettings

    streams = StreamSettings.from_env(env)  # WORK_SHARDS and CHECKPOINT_TTL as the services have them
    client = make_sync_client(RedisSettings.from_env(env))
    try:
        result = retry_dead_letter(client, args.id, work_shards=streams.work_shards,
                                   retention_ms=streams.retention_ms)
    except (RedisError, OSError) as exc:
        print(f"switchboard: cannot retry: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if isinstance(result, NotRetried):
        print(f"switchboard: {result.reason}", file=sys.stderr)
        return 1
    print(f"queued again: message {result.client_msg_id} of user {result.user}, conversation "
          f"{result.conversation}, as entry {result.id}; a worker answers it with the same client_msg_id")
    return 0


# -- export --------------------------------------------------------------------------

#: Version of the export's line format (docs/operations.md, "Exporting a user").
EXPORT_FORMAT = 1
_ROLES = {"human": "user", "ai": "assistant"}


def message_line(conversation: str, message: Any) -> dict[str, Any]:
    """One checkpointed LangChain message as an export line."""
    content = message.content
    if not isinstance(content, str):
        content = "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    line: dict[str, Any] = {"type": "message", "conversation": conversation,
                            "role": _ROLES.get(message.type, message.type), "id": message.id, "text": content}
    if getattr(message, "tool_calls", None):
        line["tool_calls"] = [{"name": c.get("name"), "args": c.get("args"), "id": c.get("id")}
                              for c in message.tool_calls]
    if message.type == "tool":
        line["tool_call_id"] = getattr(message, "tool_call_id", None)
    return line


def _opened(keyring, fields: dict[str, Any], name: str = "text") -> dict[str, Any]:  # noqa: ANN001
    """``fields`` with its sealed ``name`` opened, or marked ``unreadable``."""
    from switchboard.shared.encryption import CannotOpen

    if name not in fields:
        return fields
    try:
        return {**fields, name: keyring.open(fields[name])}
    except CannotOpen:
        return {**{k: v for k, v in fields.items() if k != name}, "unreadable": True}


async def export_user(redis, raw_redis, user: str, keyring, *, page: int = PAGE):  # noqa: ANN001
    """Every conversation of ``user`` and its retained events, as export
    lines (dicts), in order: the ``user`` line; per conversation its
    ``conversation`` line, its ``message`` lines from the newest checkpoint
    (read with the services' saver: sealed values opened with ``keyring``)
    and its ``waiting`` messages; the ``event`` lines of the outbound
    stream, oldest first, read in pages; the ``dead_letter`` copies."""
    from switchboard.shared.checkpoints import CannotOpen, SwitchboardRedisSaver, setup_saver, use_caching_serializer
    from switchboard.shared.cluster import is_cluster
    from switchboard.shared.fields import DeadField, InboundField
    from switchboard.shared.outbound import entry_to_event

    yield {"type": "user", "user": user, "exported_at": int(time.time() * 1000), "format": EXPORT_FORMAT}
    index = dict(await redis.zrange(keys.conversations(user), 0, -1, withscores=True))
    prefix, latest_prefix = keys.conversation(user, ""), f"checkpoint_latest:{keys.thread_id(user, '')}"
    found = set(index)
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        found.add(key[len(prefix):])
    async for key in redis.scan_iter(match=f"{latest_prefix}*", count=1000):
        # The thread's namespace follows; a cleared conversation's later threads end ``~N``.
        found.add(key[len(latest_prefix):].rsplit(":", 1)[0].split("~", 1)[0])
    saver = use_caching_serializer(SwitchboardRedisSaver(redis_client=raw_redis), keyring)
    if is_cluster(raw_redis):  # keyed reads only (no search index there): the library's key registry
        await setup_saver(saver)
    for conversation in sorted(found):
        progress = await redis.hgetall(keys.conversation(user, conversation))
        thread = keys.thread_id(user, conversation, int(progress.get(ConvField.GEN, 0)))  # its current generation
        config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        line: dict[str, Any] = {"type": "conversation", "conversation": conversation,
                                "updated_ms": int(index[conversation]) if conversation in index else None,
                                "count": int(progress.get(ConvField.COUNT, 0)), "checkpoint_id": None}
        try:
            checkpoint = await saver.aget_tuple(config)
        except CannotOpen:
            yield {**line, "unreadable": True}
            continue
        messages = []
        if checkpoint is not None:
            line["checkpoint_id"] = checkpoint.checkpoint.get("id")
            messages = checkpoint.checkpoint.get("channel_values", {}).get("messages", [])
        yield line
        for message in messages:
            yield message_line(conversation, message)
        for entry_id, fields in await redis.xrange(keys.inbound(user, conversation)):
            yield _opened(keyring, {"type": "waiting", "conversation": conversation, "id": entry_id,
                                    "client_msg_id": fields.get(InboundField.CMID), "device_id": fields.get(InboundField.DEV),
                                    "text": fields.get(InboundField.TEXT, ""), "ts": int(fields.get(InboundField.TS) or 0)})
    start = "-"
    while True:
        entries = await redis.xrange(keys.outbound(user), start, "+", count=page)
        for entry_id, fields in entries:
            event = msgspec_to_dict(entry_to_event(entry_id, fields))
            yield _opened(keyring, {"type": "event", **event})
        if len(entries) < page:
            break
        start = "(" + entries[-1][0]
    for entry_id, fields in await redis.xrange(keys.dead_copies(user)):
        yield _opened(keyring, {"type": "dead_letter", "id": entry_id, "conversation": fields.get(DeadField.CONV),
                                "entry": fields.get(DeadField.ENTRY), "client_msg_id": fields.get(DeadField.CMID),
                                "text": fields.get(DeadField.TEXT, "")})


def msgspec_to_dict(event: Any) -> dict[str, Any]:
    """An ``Event`` frame's fields, without those left at None."""
    import msgspec

    return {k: v for k, v in msgspec.structs.asdict(event).items() if v is not None}


def cmd_export(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``switchboard export USER [--out FILE]``."""
    import asyncio

    from redis.exceptions import RedisError

    from switchboard.shared.connection import make_client
    from switchboard.shared.settings import RedisSettings, encryption_from_env

    check_user(args.user)
    keyring = encryption_from_env(env)
    settings = RedisSettings.from_env(env)

    async def run(out) -> int:  # noqa: ANN001
        redis, raw = make_client(settings), make_client(settings, decode=False)
        unreadable = lines = 0
        try:
            async for line in export_user(redis, raw, args.user, keyring):
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                lines += 1
                unreadable += bool(line.get("unreadable"))
        finally:
            await redis.aclose()
            await raw.aclose()
        print(f"exported {lines} lines for user {args.user}" + (f" to {args.out}" if args.out else ""),
              file=sys.stderr)
        if unreadable:
            print(f"switchboard: {unreadable} lines hold text no key in ENCRYPTION_KEYS opens (marked "
                  "\"unreadable\")", file=sys.stderr)
            return 1
        return 0

    try:
        if args.out:
            with open(args.out, "w", encoding="utf-8") as out:
                return asyncio.run(run(out))
        return asyncio.run(run(sys.stdout))
    except (RedisError, OSError) as exc:
        print(f"switchboard: cannot export: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1


# -- delete --------------------------------------------------------------------------


#: Passes over the user's keys: a worker finishing a step as the keys go can
#: write one (a lease); the next pass takes it.
ERASE_PASSES = 3


@dataclass
class Erasure:
    """What :func:`erase_user` found (``dry_run``) or deleted."""

    user: str
    keys: list[str] = field(default_factory=list)  #: the user's own ``sb:{u:USER}:*`` keys
    checkpoint_keys: list[str] = field(default_factory=list)  #: its threads' ``...{u:USER}/...`` keys
    work_notices: int = 0  #: entries of the work streams naming the user
    dead_letters: int = 0  #: entries of ``sb:deadletters`` naming the user
    left: int = 0  #: keys found after the last pass (0 when complete)

    def summary(self, *, done: bool) -> str:
        verb = "deleted" if done else "would delete"
        return (f"{verb} for user {self.user}: {len(self.keys)} keys, {len(self.checkpoint_keys)} checkpoint keys, "
                f"{self.work_notices} work notices, {self.dead_letters} dead letters")


def _user_keys(client, user: str) -> tuple[list[str], list[str]]:  # noqa: ANN001
    tag = f"{{u:{user}}}"
    own = sorted(client.scan_iter(match=f"{keys.PREFIX}:{tag}:*", count=1000))
    threads = sorted(client.scan_iter(match=f"*{tag}/*", count=1000))  # checkpoint, checkpoint_latest, ...
    return own, threads


def _stream_entries_of(client, stream: str, field_name: str, user: str) -> list[str]:  # noqa: ANN001
    """Ids of ``stream``'s entries whose ``field_name`` is ``user``, read in pages."""
    found, start = [], "-"
    while True:
        page = client.xrange(stream, start, "+", count=PAGE)
        found += [entry_id for entry_id, fields in page if fields.get(field_name) == user]
        if len(page) < PAGE:
            return found
        start = "(" + page[-1][0]


def erase_user(client, user: str, *, work_shards: int, dry_run: bool = False) -> Erasure:  # noqa: ANN001
    """Delete everything Redis holds of ``user``: its keys (one hash tag, one
    slot), its conversations' checkpoint keys, and its entries in the shared
    streams (work notices, dead letters). With ``dry_run``, only count.

    Work notices go first, so no worker starts on the user while its keys
    go; a lease a running worker holds is deleted with the keys, so that
    worker's commit and deltas are refused (they check the lease) and it
    writes nothing more."""
    erasure = Erasure(user)
    notices = {keys.work(shard): _stream_entries_of(client, keys.work(shard), WorkField.USER, user)
               for shard in range(work_shards)}
    dead = _stream_entries_of(client, keys.dead_letters(), "user", user)
    erasure.work_notices, erasure.dead_letters = sum(map(len, notices.values())), len(dead)
    erasure.keys, erasure.checkpoint_keys = _user_keys(client, user)
    if dry_run:
        return erasure
    for stream, ids in notices.items():
        for i in range(0, len(ids), PAGE):
            batch = ids[i:i + PAGE]
            pipe = client.pipeline(transaction=False)
            pipe.xack(stream, keys.WORKER_GROUP, *batch)
            pipe.xdel(stream, *batch)
            pipe.execute()
    for i in range(0, len(dead), PAGE):
        client.xdel(keys.dead_letters(), *dead[i:i + PAGE])
    found = erasure.keys + erasure.checkpoint_keys
    for _ in range(ERASE_PASSES):
        for i in range(0, len(found), 500):
            client.delete(*found[i:i + 500])
        own, threads = _user_keys(client, user)
        found = own + threads
        if not found:
            break
        known = set(erasure.keys) | set(erasure.checkpoint_keys)
        erasure.keys += [k for k in own if k not in known]
        erasure.checkpoint_keys += [k for k in threads if k not in known]
    erasure.left = len(found)
    return erasure


def cmd_delete(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``switchboard delete USER [--yes] [--force]``."""
    from redis.exceptions import RedisError

    from switchboard.shared.connection import make_sync_client
    from switchboard.shared.settings import RedisSettings, StreamSettings

    check_user(args.user)
    streams = StreamSettings.from_env(env)
    client = make_sync_client(RedisSettings.from_env(env))
    try:
        connected = [d.device for d in nodes.user_devices_sync(client, args.user) if d.live]
        if connected and not args.force:
            print(f"switchboard: user {args.user} has {len(connected)} connected devices ({', '.join(connected)}); "
                  "stop the user first (revoke their tokens, wait for the devices to go), or --force",
                  file=sys.stderr)
            return 1
        erasure = erase_user(client, args.user, work_shards=streams.work_shards, dry_run=not args.yes)
    except (RedisError, OSError) as exc:
        print(f"switchboard: cannot delete: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(erasure.summary(done=args.yes))
    if not args.yes:
        print("nothing deleted: run again with --yes to delete", file=sys.stderr)
        return 1
    if erasure.left:
        print(f"switchboard: {erasure.left} keys of {args.user} came back during the erasure (a connected device?); "
              "run it again", file=sys.stderr)
        return 1
    return 0


def check_user(user: str) -> None:
    """Refuse (SettingsError, exit status 2) what is not a user id as the gateway checks them."""
    import msgspec

    from switchboard.shared.protocol import Name
    from switchboard.shared.settings import SettingsError

    try:
        msgspec.convert(user, Name)
    except msgspec.ValidationError:
        raise SettingsError(f"{user!r} is not a user id (1-128 of A-Z a-z 0-9 _ . : @ -)") from None


def cmd_inspect(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``switchboard inspect USER [--json]``."""
    from redis.exceptions import RedisError

    from switchboard.shared.connection import make_sync_client
    from switchboard.shared.settings import RedisSettings

    check_user(args.user)
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
